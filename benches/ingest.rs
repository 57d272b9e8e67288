//! Ingest throughput on the 373 Synthea bundles, beside a plain `serde_json` parse of the same
//! files in the same run. Run with `cargo bench --bench ingest`; it rewrites the ingest section
//! of docs/benchmarks.md.
//!
//! Both sides read the same unpacked files from the page cache (a warm-up pass reads them
//! first). The baseline reads each file and parses it into a `serde_json::Value`, nothing else.
//! Ingest does everything `tessera ingest` does: parse, validate, extract, classify, seal with
//! AES-256-GCM and write to a fresh SQLite database (WAL, synchronous=FULL). Each side runs
//! three times; the best run counts (the least disturbed by other work on the machine).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tessera_catalog::{Catalog, IngestOptions, Keyring, NoProgress};

const RUNS: usize = 3;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    out.sort();
    out
}

fn parse_all(files: &[PathBuf]) -> usize {
    let mut resources = 0;
    for f in files {
        let bytes = std::fs::read(f).expect("read");
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let v: serde_json::Value = serde_json::from_slice(body).expect("json");
        resources += v["entry"].as_array().map(Vec::len).unwrap_or(1);
    }
    resources
}

fn parse_all_parallel(files: &[PathBuf], threads: usize) -> usize {
    let chunks: Vec<&[PathBuf]> = files.chunks(files.len().div_ceil(threads)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || parse_all(c)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    })
}

fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed().as_secs_f64(), out)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let archive = root.join("../shared/data/synthea/synthea-r4-dev.tar.zst");
    let work = tempfile::tempdir().expect("temp dir");
    let unpacked = work.path().join("synthea");
    std::fs::create_dir(&unpacked).expect("mkdir");
    let decoder =
        zstd::Decoder::new(std::fs::File::open(&archive).expect("the shared Synthea archive"))
            .expect("zstd");
    tar::Archive::new(decoder)
        .unpack(&unpacked)
        .expect("unpack");
    let files = files_under(&unpacked);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("meta").len())
        .sum();
    let patients = 373.0;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    parse_all(&files); // warm the page cache

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ingest = || {
        let dir = tempfile::tempdir_in(work.path()).expect("db dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("tessera.db").display()
        );
        runtime.block_on(async {
            let catalog = Catalog::open(&url, Keyring::new(&[7; 32], &[]))
                .await
                .expect("open");
            let report = catalog
                .ingest(
                    std::slice::from_ref(&unpacked),
                    &IngestOptions::default(),
                    &NoProgress,
                )
                .await
                .expect("ingest");
            catalog.close().await;
            report
        })
    };
    // Runs alternate between the three, so that a disturbance of the machine hits all of them.
    let (mut parse_s, mut parse_par_s, mut ingest_s) = (f64::MAX, f64::MAX, f64::MAX);
    let mut resources = 0;
    let mut report = None;
    for _ in 0..RUNS {
        let (s, r) = timed(|| parse_all(&files));
        parse_s = parse_s.min(s);
        resources = r;
        parse_par_s = parse_par_s.min(timed(|| parse_all_parallel(&files, threads)).0);
        let (s, r) = timed(ingest);
        ingest_s = ingest_s.min(s);
        report = Some(r);
    }
    let report = report.expect("ran");
    assert!(
        report.quarantined.is_empty(),
        "the benchmark input ingests cleanly"
    );
    assert_eq!(report.patients_new, 373);

    let mb = bytes as f64 / 1e6;
    let row = |name: &str, s: f64| {
        format!(
            "| {name} | {s:.2} | {:.0} | {:.0} | {:.2} |",
            mb / s,
            patients / s,
            parse_s / s
        )
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let section = format!(
        "<!-- ingest:begin -->\n\
## Ingest throughput (issue 2)\n\n\
Command: `cargo bench --bench ingest` (release build; rewrites this section).\n\n\
Input: the {n} files of `shared/data/synthea/synthea-r4-dev.tar.zst` (373 patient bundles plus the hospital and \
practitioner bundles), {mb:.1} MB, {resources} resources, unpacked to disk and read from the page cache. \
Machine: {threads} cores ({cpu}). Best of {RUNS} runs each, the three alternating.\n\n\
| what | seconds | MB/s | patients/s | speed vs. parse-only |\n\
|---|---|---|---|---|\n\
{r1}\n{r2}\n{r3}\n\n\
The baseline reads each file and parses it into a `serde_json::Value`, nothing else. Ingest does all of \
`tessera ingest`: parse, validate, extract the normalized summary, classify sensitive categories, seal each \
record with AES-256-GCM, and write patients, keys and records to a new SQLite database (WAL, synchronous=FULL), \
using {threads} parser threads and one writer. The issue's aim is ingest at no less than half the parse-only \
speed (a ratio of 0.50 or more in the last column of the ingest row).\n\
<!-- ingest:end -->\n",
        n = files.len(),
        r1 = row("plain `serde_json` parse, 1 thread", parse_s),
        r2 = row(
            &format!("plain `serde_json` parse, {threads} threads"),
            parse_par_s
        ),
        r3 = row("`tessera` ingest into SQLite", ingest_s),
    );
    println!("{section}");
    common::write_section("ingest", &section);
}
