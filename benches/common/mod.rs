//! What every benchmark shares: writing its section of docs/benchmarks.md.

use std::path::Path;

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in
/// docs/benchmarks.md with `section` (which carries both markers), or appends it.
pub fn write_section(name: &str, section: &str) {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let updated = match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) => format!(
            "{}{}{}",
            &doc[..b],
            section.trim_end(),
            &doc[e + end.len()..]
        ),
        _ => format!("{}\n\n{}\n", doc.trim_end(), section.trim_end()),
    };
    std::fs::write(&doc_path, updated).expect("write docs/benchmarks.md");
    println!("updated {}", doc_path.display());
}
