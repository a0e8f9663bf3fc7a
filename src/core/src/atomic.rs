//! Every file lintrace writes goes through here: written to a temporary file
//! in the destination folder, flushed, then renamed over the target, so a
//! reader never sees a partial file and a crash leaves the old one intact.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`], for writers that stream into a file.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    // tempfile creates files private to the user (0600); results are meant
    // to be read by collaborators on a shared filesystem, so ask for 0644
    // (the umask still applies).
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    write(tmp.as_file_mut()).with_context(|| format!("{}: write failed", path.display()))?;
    tmp.as_file_mut().sync_all().with_context(|| format!("{}: sync failed", path.display()))?;
    if let Some(name) = path.file_name() {
        crate::fault::point(&format!("write:{}", name.to_string_lossy()));
    }
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("{}: cannot move into place", path.display()))?;
    Ok(())
}

/// Prefix of the temporary files [`write_atomic`] renames into place.
pub const TEMP_PREFIX: &str = ".lintrace-tmp-";

/// Removes temporary files that a killed writer left in `dir`. Only the
/// holder of `dir`'s lock calls this, so no live writer owns them.
pub fn remove_stale_temps(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            std::fs::remove_file(e.path()).with_context(|| format!("{}: cannot remove a stale temporary file", e.path().display()))?;
        }
    }
    Ok(())
}

pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_readable_like_ordinary_files() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap(); // 0666 minus the umask
        let umasked = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
        let ours = dir.path().join("ours");
        write_atomic(&ours, b"x").unwrap();
        assert_eq!(std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777, umasked & 0o644);
        assert_eq!(std::fs::read(&ours).unwrap(), b"x");
    }
}
