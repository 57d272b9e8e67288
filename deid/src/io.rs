//! Reading and writing the tables `tessera deid` is handed: CSV (any delimiter, detected from
//! the header line unless given) and Parquet, chosen by file extension.

use std::path::Path;

use polars::prelude::*;

use crate::error::{DeidError, Result};
use crate::frame::polars_err;

/// File format, from the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

pub fn format_of(path: &Path) -> Format {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("parquet") | Some("pq") => Format::Parquet,
        _ => Format::Csv,
    }
}

/// The most frequent of `,`, `;`, tab and `|` in the first line.
pub fn detect_delimiter(path: &Path) -> Result<u8> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|source| DeidError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut first = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut first)
        .map_err(|source| DeidError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok([b',', b';', b'\t', b'|']
        .into_iter()
        .max_by_key(|d| first.bytes().filter(|b| b == d).count())
        .unwrap_or(b','))
}

/// Reads a table; CSV columns are read as text (no type guessing that could alter values).
pub fn read_table(path: &Path, delimiter: Option<u8>) -> Result<(DataFrame, Format, u8)> {
    let format = format_of(path);
    match format {
        Format::Parquet => {
            let file = std::fs::File::open(path).map_err(|source| DeidError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let df = ParquetReader::new(file).finish().map_err(polars_err)?;
            Ok((df, format, delimiter.unwrap_or(b',')))
        }
        Format::Csv => {
            let sep = match delimiter {
                Some(d) => d,
                None => detect_delimiter(path)?,
            };
            let df = CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(Some(0))
                .map_parse_options(|o| o.with_separator(sep))
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .map_err(polars_err)?
                .finish()
                .map_err(|e| DeidError::Input {
                    message: format!("cannot read {} as CSV: {e}", path.display()),
                })?;
            Ok((df, format, sep))
        }
    }
}

/// Writes a table in the format its extension names.
pub fn write_table(df: &mut DataFrame, path: &Path, delimiter: u8) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|source| DeidError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match format_of(path) {
        Format::Parquet => {
            ParquetWriter::new(file).finish(df).map_err(polars_err)?;
        }
        Format::Csv => {
            let mut file = file;
            CsvWriter::new(&mut file)
                .with_separator(delimiter)
                .finish(df)
                .map_err(polars_err)?;
        }
    }
    Ok(())
}
