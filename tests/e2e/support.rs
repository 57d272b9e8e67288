//! Shared helpers: locating the shared data, running the binary, independent counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// A fixed test key (never a real one).
pub const TEST_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

pub fn test_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    k
}

/// A program of one of the virtual environments `scripts/install-deps` makes: `$VAR` if set,
/// else `~/.cache/tessera/NAME`; `program` is e.g. `bin/python`.
pub fn venv_program(var: &str, name: &str, program: &str) -> PathBuf {
    let venv = std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").expect("HOME"))
            .join(".cache/tessera")
            .join(name)
    });
    let path = venv.join(program);
    assert!(
        path.exists(),
        "{program} of the virtual environment {} is missing: run scripts/install-deps",
        venv.display()
    );
    path
}

/// `../shared/data` (or `$TESSERA_SHARED_DATA`): third-party test data the repository does not ship (Microsoft's FHIR
/// anonymizer cases, UCI Adult with ARX's results). On a bare clone it is absent: the test is
/// then recorded as skipped, with `what` it needs, and `scripts/test` lists it at the end.
pub fn shared_or_skip(test: &str, what: &str) -> Option<PathBuf> {
    let p = shared_data();
    if p.join(what).exists() {
        return Some(p);
    }
    let line = format!("{test}: needs ../shared/data/{what}, which is not beside this checkout\n");
    eprintln!("SKIPPED {line}");
    let list = skipped_list();
    if let Some(dir) = list.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&list)
    {
        use std::io::Write;
        let _ = f.write_all(line.as_bytes());
    }
    None
}

/// `$TESSERA_SHARED_DATA`, else `../shared/data` beside the checkout.
pub fn shared_data() -> PathBuf {
    std::env::var_os("TESSERA_SHARED_DATA")
        .map(PathBuf::from)
        // Beside the checkout the tests run in, as cargo tells the test process (a binary built
        // in another checkout sharing the target directory keeps that one's compile-time path).
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
                .join("../shared/data")
        })
}

/// Where skipped tests are listed for `scripts/test` to print (`$CARGO_TARGET_DIR/tmp`).
fn skipped_list() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("tmp/skipped-tests.txt")
}

/// The corpus shipped in the repository (`fixtures/corpus`).
fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/corpus")
}

/// The 373 Synthea bundles (plus hospital and practitioner bundles) of the shipped corpus, the
/// same archive as `../shared/data/synthea`, unpacked once per run.
pub fn synthea_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| unpack(&corpus().join("synthea-r4-dev.tar.zst")))
}

/// The twelve smallest of those bundles (the shared data's `synthea/small`), in a folder of
/// their own.
pub fn synthea_small() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        for name in SMALL {
            std::fs::copy(synthea_dir().join(name), dir.join(name)).expect("copy a small bundle");
        }
        dir
    })
}

const SMALL: [&str; 12] = [
    "Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json",
    "Antonio_Castellanos_6d2eba67-5b4a-403f-a29f-e6da3f1ea963.json",
    "Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json",
    "Chauncey_Johnston_f4673866-81fb-411a-8486-0c27f2a5b480.json",
    "Chet_Hoeger_5c6db3d0-c0fc-4eb7-8eae-dbc7847be741.json",
    "Desmond_Gutmann_d49945ce-9f8c-4974-80e3-0b38054dd45d.json",
    "Edward_Gulgowski_43481611-2459-44f5-ab20-4b142dac160f.json",
    "Gustavo_Mejía_59a8543c-e24f-4a01-b28b-47ccde6bc11d.json",
    "Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json",
    "Luigi_Wiegand_e27d88b0-c5e5-4042-ad49-184f6a900ee3.json",
    "Michael_Kihn_376f9fc0-ecd8-468a-ad93-3534a14561a3.json",
    "Xavier_Lueilwitz_1af31141-7c85-4dc9-8472-8fd3fa953ee8.json",
];

/// The 550 phenopackets of the shipped corpus, as `<COHORT>/<case>.json`, unpacked once per run.
pub fn phenopackets() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| unpack(&corpus().join("phenopackets.tar.zst")).join("phenopackets"))
}

/// Microsoft's sample bundles with free-text notes, unpacked once per run (from `shared`, the
/// path `shared_or_skip` gave).
pub fn ms_samples_dir(shared: &Path) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| unpack(&shared.join("fhir-anonymizer/samples-r4.tar.zst")))
}

fn unpack(archive: &Path) -> PathBuf {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let file = std::fs::File::open(archive).expect("open archive");
    let decoder = zstd::Decoder::new(file).expect("zstd");
    tar::Archive::new(decoder).unpack(&dir).expect("unpack");
    dir
}

/// JSON files under a folder, recursively, skipping `_`-prefixed side files.
pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                if name.ends_with(".json") && !name.starts_with('_') {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).expect("read");
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    serde_json::from_slice(body).expect("json")
}

/// Distinct records per source resource type and distinct patients, computed from raw JSON
/// without any Tessera code: FHIR resources by (type, id or fullUrl); phenopacket elements by
/// (phenopacket id, element position).
#[derive(Debug, Default)]
pub struct Expected {
    pub records: BTreeMap<String, BTreeSet<String>>,
    pub patients: BTreeSet<String>,
}

impl Expected {
    pub fn add_fhir_file(&mut self, path: &Path) {
        let v = read_json(path);
        let entries: Vec<(Option<String>, &Value)> = if v["resourceType"] == "Bundle" {
            v["entry"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| (e["fullUrl"].as_str().map(str::to_string), &e["resource"]))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            vec![(None, &v)]
        };
        for (full_url, r) in entries {
            let rt = r["resourceType"]
                .as_str()
                .expect("resourceType")
                .to_string();
            let id = r["id"]
                .as_str()
                .map(str::to_string)
                .or(full_url)
                .expect("id");
            if rt == "Patient" {
                self.patients.insert(format!("fhir:{id}"));
            } else {
                self.records.entry(rt).or_default().insert(id);
            }
        }
    }

    pub fn add_phenopacket(&mut self, path: &Path) {
        let v = read_json(path);
        let id = v["id"].as_str().expect("id").to_string();
        self.patients.insert(format!("pp:{id}"));
        let mut add = |t: &str, key: String| {
            self.records
                .entry(t.to_string())
                .or_default()
                .insert(format!("{id}/{key}"));
        };
        for (i, _) in v["phenotypicFeatures"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            add("Phenopacket.phenotypicFeature", format!("f{i}"));
        }
        for (i, _) in v["diseases"].as_array().into_iter().flatten().enumerate() {
            add("Phenopacket.disease", format!("d{i}"));
        }
        for (i, _) in v["measurements"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            add("Phenopacket.measurement", format!("m{i}"));
        }
        for (i, interp) in v["interpretations"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (j, gi) in interp["diagnosis"]["genomicInterpretations"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if gi["variantInterpretation"]["variationDescriptor"].is_object() {
                    add("Phenopacket.variant", format!("v{i}.{j}"));
                }
            }
        }
    }

    pub fn counts(&self) -> BTreeMap<String, i64> {
        self.records
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as i64))
            .collect()
    }
}

/// A data folder and the binary, isolated from the caller's environment.
pub struct Tessera {
    pub dir: tempfile::TempDir,
}

impl Tessera {
    pub fn new() -> Tessera {
        Tessera {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn database_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.data_dir().join("tessera.db").display()
        )
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
        for (k, _) in std::env::vars() {
            if k.starts_with("TESSERA_") {
                c.env_remove(k);
            }
        }
        c.env("TESSERA_DATA_DIR", self.data_dir())
            .env("TESSERA_MASTER_KEY", TEST_KEY_HEX)
            .current_dir(self.dir.path());
        c
    }

    /// `tessera key issue ARGS`: the key's id and the key, shown once.
    pub fn issue_key(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["key", "issue"];
        all.extend_from_slice(args);
        let out = self.expect(&all, 0);
        let mut lines = out.lines();
        let id = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .expect("key id")
            .to_string();
        let key = lines.next().expect("key text").trim().to_string();
        (id, key)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run tessera")
    }

    /// Runs and requires exit code `code`; returns stdout.
    pub fn expect(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            out.status.code(),
            Some(code),
            "tessera {args:?}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    pub fn ingest_json(&self, paths: &[&Path], extra: &[&str], code: i32) -> Value {
        let mut args: Vec<String> = vec!["ingest".into(), "--json".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(paths.iter().map(|p| p.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_str(&self.expect(&args, code)).expect("ingest --json output")
    }

    pub fn stats(&self) -> Value {
        serde_json::from_str(&self.expect(&["stats", "--json"], 0)).expect("stats json")
    }

    pub async fn catalog(&self) -> tessera_catalog::Catalog {
        tessera_catalog::Catalog::open(
            &self.database_url(),
            tessera_catalog::Keyring::new(&test_key(), &[]),
        )
        .await
        .expect("open catalog")
    }
}

/// A shipped release policy's text with its hierarchy files named by absolute path, for tests
/// that write a changed copy elsewhere.
pub fn shipped_policy(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    std::fs::read_to_string(dir.join(name))
        .expect("policy")
        .replace(
            "file = \"hierarchies/",
            &format!("file = \"{}/hierarchies/", dir.display()),
        )
}
