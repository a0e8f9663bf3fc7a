#!/usr/bin/env python3
"""PyTorch peer of lintrace's trainer benchmark (BENCHMARKS.md, "Trainer").

Times momentum-SGD training steps of the same models lintrace trains, built
with the same module names (so `model.state_dict()` has lintrace's tensor
names: `features.0.weight`, ..., `classifier.2.bias`):

  default-cnn   features = Sequential(Conv2d(3,32,3,p=1), ReLU,
                                      Conv2d(32,64,3,p=1), ReLU, MaxPool2d(2),
                                      Conv2d(64,64,3,p=1), ReLU, MaxPool2d(2))
                flatten (C,H,W order)
                classifier = Sequential(Linear(4096,128), ReLU, Linear(128,10))
                input 3x32x32, 10 classes (lintrace's default CNN on CIFAR-10)
  seed-cnn      conv 16, 32, M, 32, M; dense 64 (the seed recipe's CNN)

Add a model by adding an entry to MODELS (name -> builder returning
(nn.Module, input_shape, num_classes)); `cnn(...)` and `mlp(...)` build
lintrace-style specs.

  gpt-char-small / gpt-char-tiny
                nanoGPT's shakespeare_char GPT (class CharGpt), AdamW; inputs
                are token windows, labels one next token per position, and
                the output line also has "tokens_per_s"

Training: SGD(lr 0.01, momentum 0.9), cross-entropy, batch 128 by default
(AdamW for the GPTs).
The inputs are synthetic: a small pool of standard-normal batches and
uniform labels generated once on the target device before timing (data
loading is excluded, as lintrace's timing covers only the steps). `--warmup`
untimed steps run first; then `--steps` steps are timed as a whole
(torch.cuda.synchronize() before and after on CUDA).

PyTorch defaults are kept otherwise (fp32; on CUDA cuDNN may use TF32 for
convolutions, which is PyTorch's default; cudnn.benchmark is switched on).
`--tf32 off` forbids TF32 everywhere (strict fp32, lintrace's default);
`--tf32 on` allows it for matrix products too (lintrace's `--tf32`).
`--dtype bf16` uses torch.autocast(device_type="cuda", dtype=bfloat16), CUDA only.

Output: one JSON line
  {"model","device","threads","batch","steps","images_per_s",
   "seconds_per_step","torch_version", "dtype", "warmup", ...}
With `--compare-json FILE` (a JSON object with "images_per_s", e.g. lintrace's
number), the line also has "lintrace_images_per_s" and
"ratio_lintrace_over_torch" = lintrace / torch, and a readable line goes to
stderr.

Example:
  /opt/bench-venv/bin/python scripts/bench/torch_train_cnn.py --device cpu --threads 2
"""

import argparse
import json
import sys
import time

import torch
from torch import nn


# --------------------------------------------------------------------------
# models (lintrace naming)
# --------------------------------------------------------------------------

class LintraceCnn(nn.Module):
    """VGG-style CNN as lintrace builds it: features -> flatten -> classifier."""

    def __init__(self, features, classifier):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class LintraceMlp(nn.Module):
    """flatten -> layers = Sequential(Linear, Act, ..., Linear)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        return self.layers(torch.flatten(x, 1))


def cnn(conv, dense, input_shape=(3, 32, 32), num_classes=10, kernel_size=3,
        act=nn.ReLU):
    c, h, w = input_shape
    feats = []
    for item in conv:
        if item == "M":
            feats.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        else:
            feats += [nn.Conv2d(c, item, kernel_size, padding=kernel_size // 2), act()]
            c = item
    d = c * h * w
    cls = []
    for width in dense:
        cls += [nn.Linear(d, width), act()]
        d = width
    cls.append(nn.Linear(d, num_classes))
    return LintraceCnn(nn.Sequential(*feats), nn.Sequential(*cls)), tuple(input_shape), num_classes


def mlp(hidden, input_shape=(784,), num_classes=10, act=nn.ReLU):
    d = 1
    for s in input_shape:
        d *= s
    mods = []
    for width in hidden:
        mods += [nn.Linear(d, width), act()]
        d = width
    mods.append(nn.Linear(d, num_classes))
    return LintraceMlp(nn.Sequential(*mods)), tuple(input_shape), num_classes


class Block(nn.Module):
    """A basic residual block with torchvision's names; `shortcut` "a" is the
    CIFAR ResNets' zero-padding shortcut, "b" torchvision's projection."""

    def __init__(self, inp, planes, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.change = stride != 1 or inp != planes
        self.pad = (planes - inp) // 2
        self.shortcut = shortcut
        if self.change and shortcut == "b":
            self.downsample = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.change:
            sc = x
        elif self.shortcut == "a":
            sc = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            sc = self.downsample(x)
        return self.relu(out + sc)


class ResNet(nn.Module):
    """lintrace's resnet presets with the small stem (3x3 conv, no max-pool)."""

    def __init__(self, stages, widths, stem_width, shortcut, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        inp = stem_width
        for s, (n, planes) in enumerate(zip(stages, widths)):
            blocks = []
            for b in range(n):
                blocks.append(Block(inp, planes, 2 if s > 0 and b == 0 else 1, shortcut))
                inp = planes
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.nstages = len(stages)
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for s in range(self.nstages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(x.mean((2, 3)))


class Vit(nn.Module):
    """timm's VisionTransformer layout (names included), written plainly:
    patch_embed.proj, cls_token, pos_embed, pre-LayerNorm blocks (eps 1e-6)
    with F.scaled_dot_product_attention (what timm uses), GELU MLP, norm,
    head on the class token. lintrace-bench --model vit-mini --activation gelu."""

    class Block(nn.Module):
        def __init__(self, dim, heads, hidden):
            super().__init__()
            self.heads = heads
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = nn.Module()
            self.attn.qkv = nn.Linear(dim, 3 * dim)
            self.attn.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Module()
            self.mlp.fc1 = nn.Linear(dim, hidden)
            self.mlp.act = nn.GELU()
            self.mlp.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            b, t, d = x.shape
            qkv = self.attn.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            x = x + self.attn.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.norm2(x))))

    def __init__(self, patch, dim, depth, heads, hidden, num_classes=10, img=32):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        n = (img // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.blocks = nn.Sequential(*[Vit.Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class CharGpt(nn.Module):
    """nanoGPT's GPT as its `shakespeare_char` config builds it (names
    included): bias=False (no biases in Linear or LayerNorm), tied lm_head,
    dropout 0, causal F.scaled_dot_product_attention (nanoGPT's flash path),
    exact GELU, next-token logits at every position. lintrace-bench --model
    gpt-char-small --activation gelu."""

    class Block(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.ln_1 = nn.LayerNorm(dim, bias=False)
            self.attn = nn.Module()
            self.attn.c_attn = nn.Linear(dim, 3 * dim, bias=False)
            self.attn.c_proj = nn.Linear(dim, dim, bias=False)
            self.ln_2 = nn.LayerNorm(dim, bias=False)
            self.mlp = nn.Module()
            self.mlp.c_fc = nn.Linear(dim, 4 * dim, bias=False)
            self.mlp.gelu = nn.GELU()
            self.mlp.c_proj = nn.Linear(4 * dim, dim, bias=False)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.attn.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (u.view(b, t, self.heads, d // self.heads).transpose(1, 2) for u in (q, k, v))
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn.c_proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.mlp.c_proj(self.mlp.gelu(self.mlp.c_fc(self.ln_2(x))))

    def __init__(self, vocab, block, dim, depth, heads):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, dim)
        self.transformer.wpe = nn.Embedding(block, dim)
        self.transformer.h = nn.Sequential(*[CharGpt.Block(dim, heads) for _ in range(depth)])
        self.transformer.ln_f = nn.LayerNorm(dim, bias=False)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx):
        t = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(t, device=idx.device))
        return self.lm_head(self.transformer.ln_f(self.transformer.h(x))).flatten(0, 1)


# Token models: (vocab, context); their inputs are token ids and their labels
# one next token per position.
TOKEN_MODELS = {"gpt-char-small": (84, 256), "gpt-char-tiny": (84, 64)}

MODELS = {
    "default-cnn": lambda: cnn([32, 64, "M", 64, "M"], [128]),
    "seed-cnn": lambda: cnn([16, 32, "M", 32, "M"], [64]),
    # lintrace-bench --model resnet20; --model resnet18 --stem small
    "resnet20": lambda: (ResNet([3, 3, 3], [16, 32, 64], 16, "a"), (3, 32, 32), 10),
    "resnet18-small": lambda: (ResNet([2, 2, 2, 2], [64, 128, 256, 512], 64, "b"), (3, 32, 32), 10),
    # lintrace-bench --model vit-mini|vit-tiny --activation gelu
    "vit-mini": lambda: (Vit(4, 64, 4, 2, 128), (3, 32, 32), 10),
    "vit-tiny": lambda: (Vit(4, 192, 6, 3, 384), (3, 32, 32), 10),
    # lintrace-bench --model gpt-char-small --activation gelu --batch-size 64
    # (vocab 84: lintrace's Shakespeare corpus; nanoGPT's tiny-shakespeare has 65)
    "gpt-char-small": lambda: (CharGpt(84, 256, 384, 6, 6), (256,), 84),
    "gpt-char-tiny": lambda: (CharGpt(84, 64, 64, 2, 2), (64,), 84),
}


# --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default-cnn", choices=sorted(MODELS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="bf16 = autocast to bfloat16 (CUDA only)")
    ap.add_argument("--forward", action="store_true",
                    help="time forward passes in evaluation mode (no_grad) instead of training steps")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--optimizer", default=None, choices=["sgd", "adamw"],
                    help="default: adamw for the GPTs (as lintrace-bench trains them), sgd otherwise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=4,
                    help="distinct synthetic batches, cycled (default 4)")
    ap.add_argument("--tf32", default="default", choices=["default", "on", "off"],
                    help="TF32 tensor cores on CUDA: default = PyTorch's defaults (cuDNN "
                         "convolutions may use TF32, matrix products do not); on = both may; "
                         "off = neither (strict fp32, as lintrace without --tf32)")
    ap.add_argument("--compare-json", metavar="FILE",
                    help='JSON object with "images_per_s" (lintrace); adds the ratio lintrace/torch')
    args = ap.parse_args(argv)
    if args.optimizer is None:
        args.optimizer = "adamw" if args.model in TOKEN_MODELS else "sgd"

    if args.dtype == "bf16" and args.device != "cuda":
        ap.error("--dtype bf16 is supported on --device cuda only")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available in this torch build / machine")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        if args.tf32 != "default":
            torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
            torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"

    model, input_shape, num_classes = MODELS[args.model]()
    model = model.to(dev)
    model.train(not args.forward)
    tokens = args.model in TOKEN_MODELS
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = nn.CrossEntropyLoss()

    g = torch.Generator(device="cpu").manual_seed(args.seed)
    pool = max(1, args.pool)
    if tokens:
        xs = [torch.randint(0, num_classes, (args.batch, *input_shape), generator=g).to(dev) for _ in range(pool)]
        ys = [torch.randint(0, num_classes, (args.batch * input_shape[0],), generator=g).to(dev) for _ in range(pool)]
    else:
        xs = [torch.randn((args.batch, *input_shape), generator=g).to(dev) for _ in range(pool)]
        ys = [torch.randint(0, num_classes, (args.batch,), generator=g).to(dev) for _ in range(pool)]

    def autocast():
        if args.dtype == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return torch.autocast(device_type=args.device, enabled=False)

    def step(i):
        x, y = xs[i % pool], ys[i % pool]
        if args.forward:
            with torch.no_grad(), autocast():
                return model(x).sum()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    loss = None
    for i in range(args.warmup):
        loss = step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(args.warmup + i)
    sync()
    elapsed = time.perf_counter() - t0
    final_loss = float(loss.detach().float().cpu()) if loss is not None else None

    spp = elapsed / max(args.steps, 1)
    out = {
        "model": args.model,
        "device": args.device,
        "threads": args.threads,
        "batch": args.batch,
        "steps": args.steps,
        "images_per_s": args.batch * args.steps / elapsed if elapsed > 0 else None,
        "tokens_per_s": args.batch * input_shape[0] * args.steps / elapsed if tokens and elapsed > 0 else None,
        "optimizer": args.optimizer,
        "seconds_per_step": spp,
        "torch_version": torch.__version__,
        "dtype": args.dtype,
        "tf32": args.tf32,
        "warmup": args.warmup,
        "final_loss": final_loss,
        "mode": "forward" if args.forward else "train",
    }
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    if args.compare_json:
        with open(args.compare_json) as f:
            ref = json.load(f)
        lt = float(ref["images_per_s"])
        out["lintrace_images_per_s"] = lt
        out["ratio_lintrace_over_torch"] = lt / out["images_per_s"]
        print(f"lintrace {lt:.1f} images/s, torch {out['images_per_s']:.1f} images/s: "
              f"lintrace/torch = {out['ratio_lintrace_over_torch']:.3f}", file=sys.stderr)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
