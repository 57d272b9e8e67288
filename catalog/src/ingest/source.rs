//! Finding input files: explicit files, folders walked recursively, and `.tar` / `.tar.zst`
//! archives read entry by entry.

use std::path::{Path, PathBuf};

use crate::error::{CatalogError, Result};

/// One input as named on the command line or found in a folder.
#[derive(Debug, Clone)]
pub enum Input {
    File {
        path: PathBuf,
        size: u64,
    },
    Archive {
        path: PathBuf,
        size: u64,
    },
    /// Bytes fetched from a provider, never written to disk in plaintext; `label` names them in
    /// problems (a URL-free description such as `smart:<endpoint> Condition page 2`).
    Memory {
        label: String,
        bytes: Vec<u8>,
    },
}

impl Input {
    pub fn size(&self) -> u64 {
        match self {
            Input::File { size, .. } | Input::Archive { size, .. } => *size,
            Input::Memory { bytes, .. } => bytes.len() as u64,
        }
    }
}

fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar") || name.ends_with(".tar.zst") || name.ends_with(".tzst")
}

/// Whether a file found while walking a folder is taken: JSON, NDJSON and archives, and not
/// hidden or `_`-prefixed (the convention for side files such as `_counts.json`). A file named
/// explicitly is always taken.
pub fn wanted_in_walk(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.starts_with('.') || name.starts_with('_') {
        return false;
    }
    name.ends_with(".json")
        || name.ends_with(".ndjson")
        || name.ends_with(".jsonl")
        || is_archive(path)
}

/// Expands `paths` into inputs, folders recursively in name order.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| CatalogError::Io {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            push(p.clone(), meta.len(), &mut out);
        }
    }
    Ok(out)
}

fn push(path: PathBuf, size: u64, out: &mut Vec<Input>) {
    if is_archive(&path) {
        out.push(Input::Archive { path, size });
    } else {
        out.push(Input::File { path, size });
    }
}

fn walk(dir: &Path, out: &mut Vec<Input>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| CatalogError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .collect::<std::result::Result<_, _>>()
        .map_err(|source| CatalogError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::metadata(&path).map_err(|source| CatalogError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let hidden = e.file_name().to_string_lossy().starts_with('.');
            if !hidden {
                walk(&path, out)?;
            }
        } else if wanted_in_walk(&path) {
            push(path, meta.len(), out);
        }
    }
    Ok(())
}

/// Reads an archive's member files, calling `each(label, size, bytes-or-none-if-oversize)`.
pub fn read_archive(
    path: &Path,
    max_file_bytes: u64,
    mut each: impl FnMut(String, u64, Option<Vec<u8>>) -> Result<()>,
) -> Result<()> {
    use std::io::Read;
    let io = |source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let reader: Box<dyn Read> = if name.ends_with(".tar") {
        Box::new(std::io::BufReader::new(file))
    } else {
        Box::new(zstd::Decoder::new(file).map_err(io)?)
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let inner = entry.path().map_err(io)?.into_owned();
        if !wanted_in_walk(&inner) {
            continue;
        }
        let label = format!("{}!/{}", path.display(), inner.display());
        let size = entry.size();
        if size > max_file_bytes {
            each(label, size, None)?;
            continue;
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(io)?;
        each(label, size, Some(bytes))?;
    }
    Ok(())
}
