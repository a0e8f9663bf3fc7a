"""Trains a small GPT-NeoX (Pythia's architecture) from scratch and writes its
checkpoints as a Hugging Face revision series, at Pythia's revision schedule,
for `lintrace-analyze`.

Usage:
  python3 examples/recipes/hf_series.py --text fixtures/corpus/shakespeare.txt.gz \
      --out /tmp/hf_series/neox --steps 3000 --probe-out /tmp/hf_series/heldout.txt
  lintrace-analyze /tmp/hf_series/neox --probe-text /tmp/hf_series/heldout.txt \
      --context 128 --probe-size 256

What it does:
  * reads --text (plain UTF-8, or gzip if it ends in .gz) and splits it at a
    line boundary: the first 95% is the training text, the last 5% is held
    out (never trained on, nor used to train the tokenizer) and written to
    --probe-out as the probe text;
  * trains a byte-level BPE tokenizer (--vocab tokens, default 1024; ids 0
    and 1 are `<|endoftext|>` and `<|padding|>`, as in Pythia's tokenizer)
    on the training text with the `tokenizers` package, offline;
  * builds a GPTNeoXConfig as Pythia's (parallel residual, rotary on 25% of
    each head, gelu, untied embeddings, no dropout; vocabulary from the
    tokenizer) and trains it with a plain PyTorch loop: batches of --batch
    random windows of --context tokens (next-token loss), AdamW (lr --lr,
    betas 0.9/0.95, weight decay 0.01, gradient clipping 1.0), the learning
    rate rising linearly over --warmup updates, then a cosine down to 10% of
    --lr at --steps (Pythia's min_lr);
  * saves `OUT/stepN/` (model.save_pretrained: config.json,
    generation_config.json, model.safetensors; plus tokenizer.json and
    tokenizer_config.json) where stepN holds the weights after N optimizer
    updates: step0 is the initialisation, then step1, step2, step4, ...,
    step512, then step1000, step2000, ... up to --steps (Pythia's revisions).
    Updates after the last multiple of 1000 are not saved (a warning says so).

Prints the mean training loss every --log-every updates; at each saved
revision, the loss of its weights on a fixed set of training windows and on
a fixed subset of held-out windows; at the end, the loss on every
(non-overlapping) held-out window. Everything is seeded by --seed.
"""

import argparse
import gzip
import json
import math
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.utils import logging as hf_logging

SPECIAL = ["<|endoftext|>", "<|padding|>"]
MIN_LR_FRACTION = 0.1


def revision_steps(steps):
    """Pythia's revisions up to `steps`: 0, powers of two to 512, multiples of 1000."""
    out = {0}
    p = 1
    while p <= min(512, steps):
        out.add(p)
        p *= 2
    out.update(range(1000, steps + 1, 1000))
    return sorted(out)


def read_text(path):
    path = pathlib.Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def split_text(text, held_fraction=0.05):
    """(training text, held-out text): the last `held_fraction`, cut at a line start."""
    cut = int(len(text) * (1 - held_fraction))
    nl = text.rfind("\n", 0, cut)
    if nl > 0:
        cut = nl + 1
    return text[:cut], text[cut:]


def train_tokenizer(text, vocab):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = text.splitlines(keepends=True)
    tok.train_from_iterator((("".join(lines[i : i + 1000])) for i in range(0, len(lines), 1000)), trainer=trainer)
    return tok


def encode(tok, text):
    """Token ids of `text`, encoded in chunks of lines (in parallel) and concatenated."""
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i : i + 200]) for i in range(0, len(lines), 200)]
    ids = []
    for enc in tok.encode_batch(chunks, add_special_tokens=False):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


def save_tokenizer(tok, folder):
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPTNeoXTokenizer",
        "bos_token": SPECIAL[0],
        "eos_token": SPECIAL[0],
        "unk_token": SPECIAL[0],
        "pad_token": SPECIAL[1],
        "add_prefix_space": False,
        "model_max_length": 1000000000000000019884624838656,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def lr_at(update, args):
    """Learning rate of the `update`-th optimizer update (1-based)."""
    if update <= args.warmup:
        return args.lr * update / args.warmup
    span = max(1, args.steps - args.warmup)
    progress = min(1.0, (update - args.warmup) / span)
    floor = args.lr * MIN_LR_FRACTION
    return floor + (args.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def mean_loss(model, windows, batch):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i : i + batch]
        logits = model(input_ids=w[:, :-1]).logits
        total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="corpus: UTF-8 text, or .gz")
    ap.add_argument("--out", required=True, help="series folder: OUT/stepN/ per revision")
    ap.add_argument("--steps", type=int, default=3000, help="optimizer updates (default 3000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, help="MLP width (default 4 x --hidden)")
    ap.add_argument("--context", type=int, default=128, help="tokens per training window, and max positions")
    ap.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size")
    ap.add_argument("--batch", type=int, default=16, help="windows per batch")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--probe-out", help="where to write the held-out text (default OUT/heldout.txt)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    t_start = time.time()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probe_out = pathlib.Path(args.probe_out) if args.probe_out else out / "heldout.txt"
    probe_out.parent.mkdir(parents=True, exist_ok=True)

    text = read_text(args.text)
    train_text, held_text = split_text(text)
    probe_out.write_text(held_text, encoding="utf-8")
    print(f"corpus {len(text)} chars: training {len(train_text)}, held out {len(held_text)} -> {probe_out}")

    tok = train_tokenizer(train_text, args.vocab)
    train_ids = encode(tok, train_text)
    held_ids = encode(tok, held_text)
    vocab = tok.get_vocab_size()
    print(
        f"tokenizer: {vocab} tokens; training {len(train_ids)} tokens "
        f"({len(train_text) / len(train_ids):.2f} chars/token), held out {len(held_ids)} tokens"
    )

    torch.manual_seed(args.seed)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate or 4 * args.hidden,
        max_position_embeddings=args.context,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    model = GPTNeoXForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT-NeoX: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, {n_params} parameters")

    # Windows of context + 1 tokens: inputs are the first `context`, targets shifted by one.
    g = torch.Generator().manual_seed(args.seed)
    span = args.context + 1
    if len(train_ids) < span or len(held_ids) < span:
        sys.exit("the corpus is too short for one window of --context tokens in each split")

    def windows(ids, starts):
        return torch.stack([ids[s : s + span] for s in starts.tolist()])

    train_eval = windows(train_ids, torch.randint(0, len(train_ids) - span + 1, (64,), generator=g))
    held_all = windows(held_ids, torch.arange(0, len(held_ids) - span + 1, args.context))
    held_eval = held_all[torch.randperm(len(held_all), generator=g)[:64]]

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )

    saves = set(revision_steps(args.steps))
    if args.steps not in saves:
        print(f"warning: --steps {args.steps} is not on Pythia's schedule; updates after step{max(saves)} are not saved")

    def save(step):
        folder = out / f"step{step}"
        model.save_pretrained(folder)
        save_tokenizer(tok, folder)
        tr = mean_loss(model, train_eval, args.batch)
        he = mean_loss(model, held_eval, args.batch)
        print(f"saved step{step}: train loss {tr:.4f}, held-out loss {he:.4f} (fixed 64 windows each)", flush=True)

    save(0)
    t_train = time.time()
    running, n_running = 0.0, 0
    for update in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(update, args)
        starts = torch.randint(0, len(train_ids) - span + 1, (args.batch,), generator=g)
        w = windows(train_ids, starts)
        logits = model(input_ids=w[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        n_running += 1
        if update % args.log_every == 0 or update == args.steps:
            el = time.time() - t_train
            print(
                f"step {update}: train loss {running / n_running:.4f} (mean of last {n_running}), "
                f"lr {lr_at(update, args):.2e}, {el:.0f}s",
                flush=True,
            )
            running, n_running = 0.0, 0
        if update in saves:
            save(update)

    held = mean_loss(model, held_all, args.batch)
    print(f"final held-out loss {held:.4f} over {len(held_all)} windows of {args.context} tokens (step{args.steps})")
    print(f"wall time {time.time() - t_start:.0f}s (training loop {time.time() - t_train:.0f}s)")


if __name__ == "__main__":
    main()
