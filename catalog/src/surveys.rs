//! Study surveys as FHIR R4 Questionnaires: the subset a patient answers in a browser, and the
//! QuestionnaireResponse made from their answers.
//!
//! Supported: item types `group`, `display`, `boolean`, `decimal`, `integer`, `date`, `string`,
//! `text` and `choice` (`answerOption` of `valueCoding`, `valueString` or `valueInteger`);
//! `required`; `enableWhen` (operators `exists`, `=`, `!=`, `>`, `<`, `>=`, `<=` on boolean,
//! integer, decimal, date, string and coding answers) with `enableBehavior` `all` or `any`;
//! `repeats` on groups (a patient adds instances) and on choice items (several options).
//! Anything else is refused when the questionnaire is added, naming the item, so a study learns
//! at once what its patients could not answer.
//!
//! Answers travel as form fields: the field of an item is its path, `linkId` for a top-level
//! item and `group#n/linkId` inside the n-th instance (from 0) of a repeating group.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::Catalog;
use crate::error::{CatalogError, Result};
use crate::ingest::random_bytes;

/// A questionnaire a patient can answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Questionnaire {
    /// Canonical URL (without `|version`).
    pub url: String,
    pub version: Option<String>,
    pub title: String,
    pub description: Option<String>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    Group,
    Display,
    Boolean,
    Decimal,
    Integer,
    Date,
    String,
    Text,
    Choice,
}

impl ItemType {
    fn parse(s: &str) -> Option<ItemType> {
        Some(match s {
            "group" => ItemType::Group,
            "display" => ItemType::Display,
            "boolean" => ItemType::Boolean,
            "decimal" => ItemType::Decimal,
            "integer" => ItemType::Integer,
            "date" => ItemType::Date,
            "string" => ItemType::String,
            "text" => ItemType::Text,
            "choice" => ItemType::Choice,
            _ => return None,
        })
    }
}

/// An answer's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Boolean(bool),
    Decimal(f64),
    Integer(i64),
    Date(String),
    String(String),
    Coding {
        system: String,
        code: String,
        display: Option<String>,
    },
}

impl Answer {
    fn fhir(&self) -> Value {
        match self {
            Answer::Boolean(b) => json!({"valueBoolean": b}),
            Answer::Decimal(d) => json!({"valueDecimal": d}),
            Answer::Integer(i) => json!({"valueInteger": i}),
            Answer::Date(d) => json!({"valueDate": d}),
            Answer::String(s) => json!({"valueString": s}),
            Answer::Coding {
                system,
                code,
                display,
            } => {
                let mut c = json!({"system": system, "code": code});
                if let Some(d) = display {
                    c["display"] = json!(d);
                }
                json!({"valueCoding": c})
            }
        }
    }

    /// The label a person reads.
    pub fn label(&self) -> String {
        match self {
            Answer::Boolean(true) => "Yes".into(),
            Answer::Boolean(false) => "No".into(),
            Answer::Decimal(d) => d.to_string(),
            Answer::Integer(i) => i.to_string(),
            Answer::Date(d) | Answer::String(d) => d.clone(),
            Answer::Coding { code, display, .. } => display.clone().unwrap_or_else(|| code.clone()),
        }
    }

    /// The form value that stands for this answer (an option's index for choices).
    fn form_value(&self, options: &[Answer]) -> String {
        match self {
            Answer::Boolean(b) => b.to_string(),
            Answer::Coding { .. } => options
                .iter()
                .position(|o| o == self)
                .map(|i| i.to_string())
                .unwrap_or_default(),
            Answer::String(s) if !options.is_empty() => options
                .iter()
                .position(|o| o == self)
                .map(|i| i.to_string())
                .unwrap_or_else(|| s.clone()),
            Answer::Integer(v) if !options.is_empty() => options
                .iter()
                .position(|o| o == self)
                .map(|i| i.to_string())
                .unwrap_or_else(|| v.to_string()),
            other => other.label(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Exists,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnableWhen {
    pub question: String,
    pub operator: Operator,
    /// For `exists`: whether an answer should exist.
    pub exists: bool,
    pub answer: Option<Answer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub link_id: String,
    pub text: String,
    pub kind: ItemType,
    pub required: bool,
    pub repeats: bool,
    pub options: Vec<Answer>,
    pub enable_when: Vec<EnableWhen>,
    /// `any` (else `all`).
    pub enable_any: bool,
    pub items: Vec<Item>,
}

fn bad(what: String) -> CatalogError {
    CatalogError::invalid(what)
}

fn answer_of(v: &Value, prefix: &str) -> Option<Answer> {
    let key = |t: &str| format!("{prefix}{t}");
    if let Some(b) = v[key("Boolean")].as_bool() {
        return Some(Answer::Boolean(b));
    }
    if let Some(i) = v[key("Integer")].as_i64() {
        return Some(Answer::Integer(i));
    }
    if let Some(d) = v[key("Decimal")].as_f64() {
        return Some(Answer::Decimal(d));
    }
    if let Some(d) = v[key("Date")].as_str() {
        return Some(Answer::Date(d.to_string()));
    }
    if let Some(s) = v[key("String")].as_str() {
        return Some(Answer::String(s.to_string()));
    }
    let c = &v[key("Coding")];
    if c.is_object() {
        return Some(Answer::Coding {
            system: c["system"].as_str().unwrap_or("").to_string(),
            code: c["code"].as_str()?.to_string(),
            display: c["display"].as_str().map(str::to_string),
        });
    }
    None
}

fn parse_items(v: &Value, path: &str) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for (i, it) in v.as_array().into_iter().flatten().enumerate() {
        let here = format!("{path}item[{i}]");
        let link_id = it["linkId"]
            .as_str()
            .filter(|s| !s.is_empty() && !s.contains(['#', '/']))
            .ok_or_else(|| bad(format!("{here}.linkId: a non-empty id without `#` or `/`")))?
            .to_string();
        let t = it["type"].as_str().unwrap_or("");
        let kind = ItemType::parse(t).ok_or_else(|| {
            bad(format!(
                "{here} ({link_id}): type `{t}` is not one Tessera's survey pages can ask (group, display, boolean, decimal, integer, date, string, text, choice)"
            ))
        })?;
        let repeats = it["repeats"].as_bool().unwrap_or(false);
        if repeats && !matches!(kind, ItemType::Group | ItemType::Choice) {
            return Err(bad(format!(
                "{here} ({link_id}): `repeats` is supported on groups and choices only"
            )));
        }
        let mut options = Vec::new();
        for (j, o) in it["answerOption"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            options.push(answer_of(o, "value").ok_or_else(|| {
                bad(format!(
                    "{here}.answerOption[{j}]: use valueCoding, valueString or valueInteger"
                ))
            })?);
        }
        if kind == ItemType::Choice && options.is_empty() {
            return Err(bad(format!(
                "{here} ({link_id}): a choice needs answerOption (answerValueSet is not supported)"
            )));
        }
        let mut enable_when = Vec::new();
        for (j, e) in it["enableWhen"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let operator = match e["operator"].as_str().unwrap_or("") {
                "exists" => Operator::Exists,
                "=" => Operator::Eq,
                "!=" => Operator::Ne,
                ">" => Operator::Gt,
                "<" => Operator::Lt,
                ">=" => Operator::Ge,
                "<=" => Operator::Le,
                other => {
                    return Err(bad(format!(
                        "{here}.enableWhen[{j}]: operator `{other}` is not one of exists, =, !=, >, <, >=, <="
                    )));
                }
            };
            let question = e["question"]
                .as_str()
                .ok_or_else(|| bad(format!("{here}.enableWhen[{j}].question is missing")))?
                .to_string();
            let exists = e["answerBoolean"].as_bool().unwrap_or(true);
            let answer = answer_of(e, "answer");
            if operator != Operator::Exists && answer.is_none() {
                return Err(bad(format!(
                    "{here}.enableWhen[{j}]: an answer[x] is needed"
                )));
            }
            enable_when.push(EnableWhen {
                question,
                operator,
                exists,
                answer,
            });
        }
        let enable_any = it["enableBehavior"].as_str() == Some("any");
        let items = parse_items(&it["item"], &format!("{here}."))?;
        if kind == ItemType::Group && items.is_empty() {
            return Err(bad(format!("{here} ({link_id}): a group needs items")));
        }
        out.push(Item {
            link_id,
            text: it["text"].as_str().unwrap_or("").to_string(),
            kind,
            required: it["required"].as_bool().unwrap_or(false),
            repeats,
            options,
            enable_when,
            enable_any,
            items,
        });
    }
    Ok(out)
}

fn all_link_ids(items: &[Item], out: &mut Vec<String>) {
    for i in items {
        out.push(i.link_id.clone());
        all_link_ids(&i.items, out);
    }
}

impl Questionnaire {
    /// Reads a FHIR R4 Questionnaire, refusing what the survey pages cannot ask.
    pub fn parse(v: &Value) -> Result<Questionnaire> {
        if v["resourceType"] != "Questionnaire" {
            return Err(bad("resourceType: a Questionnaire is needed".into()));
        }
        let url = v["url"]
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| bad("url: a questionnaire needs its canonical URL".into()))?;
        let items = parse_items(&v["item"], "")?;
        if items.is_empty() {
            return Err(bad("item: the questionnaire asks nothing".into()));
        }
        let mut ids = Vec::new();
        all_link_ids(&items, &mut ids);
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            if !seen.insert(id.clone()) {
                return Err(bad(format!("linkId `{id}` is used twice")));
            }
        }
        let q = Questionnaire {
            url: url.split('|').next().unwrap_or(url).to_string(),
            version: v["version"].as_str().map(str::to_string),
            title: v["title"]
                .as_str()
                .or(v["name"].as_str())
                .unwrap_or(url)
                .to_string(),
            description: v["description"].as_str().map(str::to_string),
            items,
        };
        q.check_enable_when(&q.items, &seen)?;
        Ok(q)
    }

    fn check_enable_when(
        &self,
        items: &[Item],
        ids: &std::collections::BTreeSet<String>,
    ) -> Result<()> {
        for i in items {
            for e in &i.enable_when {
                if !ids.contains(&e.question) {
                    return Err(bad(format!(
                        "{}: enableWhen names question `{}`, which is not in the questionnaire",
                        i.link_id, e.question
                    )));
                }
            }
            self.check_enable_when(&i.items, ids)?;
        }
        Ok(())
    }

    /// The canonical reference a response names: `url|version`.
    pub fn reference(&self) -> String {
        match &self.version {
            Some(v) => format!("{}|{v}", self.url),
            None => self.url.clone(),
        }
    }
}

/// Raw form fields: item path → values as typed or chosen.
pub type Fields = BTreeMap<String, Vec<String>>;

/// The typed answers of a filled form, by item path, with the instances of repeating groups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filled {
    pub answers: BTreeMap<String, Vec<Answer>>,
    /// Instances of each repeating group (at least one).
    pub instances: BTreeMap<String, usize>,
}

/// A problem with one item of a filled form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

fn path_of(prefix: &str, link_id: &str) -> String {
    if prefix.is_empty() {
        link_id.to_string()
    } else {
        format!("{prefix}/{link_id}")
    }
}

fn parse_value(item: &Item, raw: &str) -> std::result::Result<Answer, String> {
    let raw = raw.trim();
    match item.kind {
        ItemType::Boolean => match raw {
            "true" | "yes" => Ok(Answer::Boolean(true)),
            "false" | "no" => Ok(Answer::Boolean(false)),
            _ => Err("answer yes or no".into()),
        },
        ItemType::Integer => raw
            .parse::<i64>()
            .map(Answer::Integer)
            .map_err(|_| "a whole number, such as 3".into()),
        ItemType::Decimal => raw
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite())
            .map(Answer::Decimal)
            .ok_or_else(|| "a number, such as 2.5".into()),
        ItemType::Date => chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .map(|_| Answer::Date(raw.to_string()))
            .map_err(|_| "a date as YYYY-MM-DD".into()),
        ItemType::String | ItemType::Text => {
            let limit = if item.kind == ItemType::String {
                500
            } else {
                10_000
            };
            if raw.chars().count() > limit {
                Err(format!("at most {limit} characters"))
            } else {
                Ok(Answer::String(raw.to_string()))
            }
        }
        ItemType::Choice => raw
            .parse::<usize>()
            .ok()
            .and_then(|i| item.options.get(i).cloned())
            .ok_or_else(|| "choose one of the options".into()),
        ItemType::Group | ItemType::Display => Err("this item takes no answer".into()),
    }
}

fn compare(a: &Answer, b: &Answer) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Answer::Boolean(x), Answer::Boolean(y)) => Some(x.cmp(y)),
        (Answer::Integer(x), Answer::Integer(y)) => Some(x.cmp(y)),
        (Answer::Decimal(x), Answer::Decimal(y)) => x.partial_cmp(y),
        (Answer::Integer(x), Answer::Decimal(y)) => (*x as f64).partial_cmp(y),
        (Answer::Decimal(x), Answer::Integer(y)) => x.partial_cmp(&(*y as f64)),
        (Answer::Date(x), Answer::Date(y)) | (Answer::String(x), Answer::String(y)) => {
            Some(x.cmp(y))
        }
        (
            Answer::Coding {
                system: s1,
                code: c1,
                ..
            },
            Answer::Coding {
                system: s2,
                code: c2,
                ..
            },
        ) => (s1 == s2 && c1 == c2).then_some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

impl Filled {
    /// The answers of the item `link_id` seen from `prefix`: in the same group instance when
    /// it is there, else at the top level or in the first instance where it is.
    fn lookup(&self, prefix: &str, link_id: &str) -> &[Answer] {
        let mut p = prefix.to_string();
        loop {
            if let Some(a) = self.answers.get(&path_of(&p, link_id)) {
                return a;
            }
            if p.is_empty() {
                break;
            }
            p = p
                .rsplit_once('/')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default();
        }
        self.answers
            .iter()
            .find(|(k, _)| k.rsplit('/').next() == Some(link_id))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    /// Whether an item is enabled, given the answers so far.
    pub fn enabled(&self, item: &Item, prefix: &str) -> bool {
        if item.enable_when.is_empty() {
            return true;
        }
        let test = |e: &EnableWhen| {
            let given = self.lookup(prefix, &e.question);
            match e.operator {
                Operator::Exists => given.is_empty() != e.exists,
                op => given.iter().any(|g| {
                    let Some(want) = &e.answer else { return false };
                    match (op, compare(g, want)) {
                        (Operator::Eq, Some(o)) => o.is_eq(),
                        (Operator::Ne, Some(o)) => o.is_ne(),
                        (Operator::Ne, None) => true,
                        (Operator::Gt, Some(o)) => o.is_gt(),
                        (Operator::Lt, Some(o)) => o.is_lt(),
                        (Operator::Ge, Some(o)) => o.is_ge(),
                        (Operator::Le, Some(o)) => o.is_le(),
                        _ => false,
                    }
                }),
            }
        };
        if item.enable_any {
            item.enable_when.iter().any(test)
        } else {
            item.enable_when.iter().all(test)
        }
    }

    /// The form value of an item's answer(s), to fill the form in again.
    pub fn form_values(&self, item: &Item, path: &str) -> Vec<String> {
        self.answers
            .get(path)
            .map(|v| v.iter().map(|a| a.form_value(&item.options)).collect())
            .unwrap_or_default()
    }
}

/// The instances of the repeating group at `path` the fields hold (at least one).
fn instances_in(fields: &Fields, path: &str) -> usize {
    let prefix = format!("{path}#");
    let mut n = 1;
    for k in fields.keys() {
        if let Some(rest) = k.strip_prefix(&prefix)
            && let Some(i) = rest.split('/').next().and_then(|x| x.parse::<usize>().ok())
        {
            n = n.max(i + 1);
        }
    }
    if let Some(v) = fields.get(&format!("{path}#count")).and_then(|v| v.first())
        && let Ok(c) = v.parse::<usize>()
    {
        n = n.max(c.min(50));
    }
    n
}

fn read_items(
    items: &[Item],
    prefix: &str,
    fields: &Fields,
    filled: &mut Filled,
    problems: &mut Vec<Problem>,
) {
    for item in items {
        let path = path_of(prefix, &item.link_id);
        match item.kind {
            ItemType::Display => {}
            ItemType::Group if item.repeats => {
                let n = instances_in(fields, &path);
                filled.instances.insert(path.clone(), n);
                for i in 0..n {
                    read_items(
                        &item.items,
                        &format!("{path}#{i}"),
                        fields,
                        filled,
                        problems,
                    );
                }
            }
            ItemType::Group => read_items(&item.items, &path, fields, filled, problems),
            _ => {
                let raw: Vec<&String> = fields
                    .get(&path)
                    .map(|v| v.iter().filter(|s| !s.trim().is_empty()).collect())
                    .unwrap_or_default();
                let raw = if item.repeats {
                    raw
                } else {
                    raw.into_iter().take(1).collect()
                };
                let mut got = Vec::new();
                for r in raw {
                    match parse_value(item, r) {
                        Ok(a) => got.push(a),
                        Err(m) => problems.push(Problem {
                            path: path.clone(),
                            message: format!("{}: {m}", item.text),
                        }),
                    }
                }
                if !got.is_empty() {
                    filled.answers.insert(path, got);
                }
            }
        }
    }
}

/// Drops answers to items that are not enabled (so that a hidden item's stale answer neither
/// counts nor enables others), repeatedly until nothing changes.
fn prune_disabled(items: &[Item], filled: &mut Filled) {
    loop {
        let mut drop = Vec::new();
        walk(items, "", filled, &mut |item, path, prefix, f| {
            if !f.enabled(item, prefix) {
                drop.push(path.to_string());
            }
        });
        let before = filled.answers.len();
        for p in &drop {
            let prefix = format!("{p}#");
            let inner = format!("{p}/");
            filled
                .answers
                .retain(|k, _| k != p && !k.starts_with(&prefix) && !k.starts_with(&inner));
        }
        if filled.answers.len() == before {
            return;
        }
    }
}

/// Visits every answerable or group item with its path and its parent's prefix.
fn walk(
    items: &[Item],
    prefix: &str,
    filled: &Filled,
    f: &mut dyn FnMut(&Item, &str, &str, &Filled),
) {
    for item in items {
        let path = path_of(prefix, &item.link_id);
        f(item, &path, prefix, filled);
        if item.kind == ItemType::Group {
            if item.repeats {
                let n = filled.instances.get(&path).copied().unwrap_or(1);
                for i in 0..n {
                    walk(&item.items, &format!("{path}#{i}"), filled, f);
                }
            } else {
                walk(&item.items, &path, filled, f);
            }
        }
    }
}

impl Questionnaire {
    /// Reads a form's fields into typed answers; answers to items that are not enabled are
    /// dropped. Problems name each item whose answer does not parse.
    pub fn read(&self, fields: &Fields) -> (Filled, Vec<Problem>) {
        let mut filled = Filled::default();
        let mut problems = Vec::new();
        read_items(&self.items, "", fields, &mut filled, &mut problems);
        prune_disabled(&self.items, &mut filled);
        (filled, problems)
    }

    /// What stops a submission: required items that are enabled (inside enabled groups) and
    /// unanswered.
    pub fn missing(&self, filled: &Filled) -> Vec<Problem> {
        let mut out = Vec::new();
        fn go(items: &[Item], prefix: &str, filled: &Filled, out: &mut Vec<Problem>) {
            for item in items {
                let path = path_of(prefix, &item.link_id);
                if !filled.enabled(item, prefix) {
                    continue;
                }
                match item.kind {
                    ItemType::Group if item.repeats => {
                        for i in 0..filled.instances.get(&path).copied().unwrap_or(1) {
                            go(&item.items, &format!("{path}#{i}"), filled, out);
                        }
                    }
                    ItemType::Group => go(&item.items, &path, filled, out),
                    ItemType::Display => {}
                    _ => {
                        if item.required && !filled.answers.contains_key(&path) {
                            out.push(Problem {
                                path,
                                message: format!("{}: an answer is needed", item.text),
                            });
                        }
                    }
                }
            }
        }
        go(&self.items, "", filled, &mut out);
        out
    }

    /// The QuestionnaireResponse of a complete form: enabled items with answers, groups
    /// holding answered items, repeating groups as one `item` per instance.
    pub fn response(&self, filled: &Filled, id: &str, patient_ref: &str, authored: &str) -> Value {
        fn items(q: &[Item], prefix: &str, filled: &Filled) -> Vec<Value> {
            let mut out = Vec::new();
            for item in q {
                let path = path_of(prefix, &item.link_id);
                if !filled.enabled(item, prefix) {
                    continue;
                }
                match item.kind {
                    ItemType::Display => {}
                    ItemType::Group => {
                        let prefixes: Vec<String> = if item.repeats {
                            (0..filled.instances.get(&path).copied().unwrap_or(1))
                                .map(|i| format!("{path}#{i}"))
                                .collect()
                        } else {
                            vec![path.clone()]
                        };
                        for p in prefixes {
                            let inner = items(&item.items, &p, filled);
                            if !inner.is_empty() {
                                out.push(json!({"linkId": item.link_id, "text": item.text, "item": inner}));
                            }
                        }
                    }
                    _ => {
                        if let Some(a) = filled.answers.get(&path) {
                            out.push(json!({
                                "linkId": item.link_id,
                                "text": item.text,
                                "answer": a.iter().map(Answer::fhir).collect::<Vec<_>>(),
                            }));
                        }
                    }
                }
            }
            out
        }
        json!({
            "resourceType": "QuestionnaireResponse",
            "id": id,
            "questionnaire": self.reference(),
            "status": "completed",
            "subject": {"reference": patient_ref},
            "authored": authored,
            "item": items(&self.items, "", filled),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Storage: questionnaires, drafts, submission

/// The source name of surveys answered on the patients' pages.
pub const SURVEY_SOURCE: &str = "tessera-surveys";

/// A questionnaire as stored, with the study whose incentive it earns.
#[derive(Debug, Clone)]
pub struct Stored {
    /// A short id for page addresses (from the URL's SHA-256).
    pub id: String,
    pub questionnaire: Questionnaire,
    pub study: Option<String>,
}

/// Where a patient stands with a survey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Open,
    /// Saved, to finish later (when).
    Draft(String),
    /// Answered (when).
    Done(String),
}

fn draft_aad(patient_id: &str, id: &str) -> Vec<u8> {
    format!("survey_drafts/{patient_id}/{id}").into_bytes()
}

/// The short id of a questionnaire URL.
pub fn questionnaire_id(url: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    hex::encode(&d.as_ref()[..8])
}

/// What submitting a survey came to.
#[derive(Debug)]
pub enum Submitted {
    /// Stored as a QuestionnaireResponse (its canonical questionnaire reference).
    Stored { questionnaire: String },
    /// Not complete: these items need answers or fixing (the draft is saved).
    Incomplete(Vec<Problem>),
}

impl Catalog {
    /// Adds (or replaces) a questionnaire patients can answer, for `study`'s incentive.
    pub async fn add_questionnaire(&self, resource: &Value, study: Option<&str>) -> Result<Stored> {
        let q = Questionnaire::parse(resource)?;
        let id = questionnaire_id(&q.url);
        self.store
            .upsert_questionnaire(
                &id,
                &q.url,
                q.version.as_deref(),
                &q.title,
                study,
                &resource.to_string(),
            )
            .await?;
        Ok(Stored {
            id,
            questionnaire: q,
            study: study.map(str::to_string),
        })
    }

    /// Every questionnaire patients can answer.
    pub async fn questionnaires(&self) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        for (id, _url, _title, study, resource) in self.store.questionnaires().await? {
            let v: Value = serde_json::from_str(&resource)
                .map_err(|_| CatalogError::internal("a stored questionnaire does not parse"))?;
            out.push(Stored {
                id,
                questionnaire: Questionnaire::parse(&v)?,
                study,
            });
        }
        Ok(out)
    }

    /// The surveys open to a patient, with where they stand on each.
    pub async fn surveys_for(&self, patient_id: &str) -> Result<Vec<(Stored, Standing)>> {
        let done: BTreeMap<String, String> = self
            .own_data(patient_id)
            .await?
            .records
            .into_iter()
            .filter_map(|r| match r.body.clinical {
                crate::model::Clinical::SurveyResponse {
                    questionnaire: Some(q),
                    status,
                    authored,
                    ..
                } if status.as_deref() == Some("completed") => Some((
                    q.split('|').next().unwrap_or(&q).to_string(),
                    authored.unwrap_or(r.received_at),
                )),
                _ => None,
            })
            .collect();
        let drafts: BTreeMap<String, String> = self
            .store
            .drafts(patient_id)
            .await?
            .into_iter()
            .map(|(id, _, at)| (id, at))
            .collect();
        Ok(self
            .questionnaires()
            .await?
            .into_iter()
            .map(|s| {
                let standing = if let Some(at) = done.get(&s.questionnaire.url) {
                    Standing::Done(at.clone())
                } else if let Some(at) = drafts.get(&s.id) {
                    Standing::Draft(at.clone())
                } else {
                    Standing::Open
                };
                (s, standing)
            })
            .collect())
    }

    /// A patient's saved fields for a survey (empty when none).
    pub async fn draft(&self, patient_id: &str, id: &str) -> Result<Fields> {
        for (qid, sealed, _) in self.store.drafts(patient_id).await? {
            if qid == id {
                return serde_json::from_slice(
                    &self
                        .vault
                        .open(patient_id, &sealed, &draft_aad(patient_id, id))
                        .await?,
                )
                .map_err(|_| CatalogError::internal("a stored draft does not parse"));
            }
        }
        Ok(Fields::new())
    }

    /// Saves a patient's fields to finish later.
    pub async fn save_draft(&self, patient_id: &str, id: &str, fields: &Fields) -> Result<()> {
        let sealed = self
            .vault
            .seal(
                patient_id,
                &serde_json::to_vec(fields)
                    .map_err(|e| CatalogError::internal(format!("sealing a draft: {e}")))?,
                &draft_aad(patient_id, id),
            )
            .await?;
        self.store.save_draft(patient_id, id, &sealed).await
    }

    /// Submits a survey: when complete, its QuestionnaireResponse is stored through the
    /// ingest path (source [`SURVEY_SOURCE`]) and the draft removed; otherwise the draft is
    /// saved and the problems answered.
    pub async fn submit_survey(
        &self,
        patient_id: &str,
        stored: &Stored,
        fields: &Fields,
    ) -> Result<Submitted> {
        let q = &stored.questionnaire;
        let (filled, mut problems) = q.read(fields);
        problems.extend(q.missing(&filled));
        if !problems.is_empty() {
            self.save_draft(patient_id, &stored.id, fields).await?;
            return Ok(Submitted::Incomplete(problems));
        }
        let id = hex::encode(random_bytes::<16>()?);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let response = q.response(&filled, &id, &format!("Patient/{patient_id}"), &now);
        crate::ingest::ingest_own_resource(
            &self.store,
            &self.keyring,
            &self.vault,
            patient_id,
            SURVEY_SOURCE,
            &response,
        )
        .await?;
        self.store.delete_draft(patient_id, &stored.id).await?;
        Ok(Submitted::Stored {
            questionnaire: q.reference(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Questionnaire {
        Questionnaire::parse(&json!({
            "resourceType": "Questionnaire",
            "url": "https://example.org/Questionnaire/seizures",
            "version": "2",
            "title": "Seizures this month",
            "item": [
                {"linkId": "any", "text": "Any seizures in the last 30 days?", "type": "boolean", "required": true},
                {"linkId": "count", "text": "How many?", "type": "integer", "required": true,
                 "enableWhen": [{"question": "any", "operator": "=", "answerBoolean": true}]},
                {"linkId": "severity", "text": "Worst severity", "type": "choice",
                 "answerOption": [{"valueCoding": {"system": "s", "code": "mild", "display": "Mild"}},
                                  {"valueCoding": {"system": "s", "code": "severe", "display": "Severe"}}],
                 "enableWhen": [{"question": "count", "operator": ">", "answerInteger": 0}]},
                {"linkId": "meds", "text": "Rescue medications", "type": "group", "repeats": true, "item": [
                    {"linkId": "name", "text": "Medication", "type": "string", "required": true},
                    {"linkId": "when", "text": "Date", "type": "date"}
                ], "enableWhen": [{"question": "any", "operator": "=", "answerBoolean": true}]},
                {"linkId": "note", "text": "Anything else", "type": "text"}
            ]
        }))
        .expect("parses")
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        let mut f = Fields::new();
        for (k, v) in pairs {
            f.entry(k.to_string()).or_default().push(v.to_string());
        }
        f
    }

    #[test]
    fn unsupported_items_are_refused_by_name() {
        let e = Questionnaire::parse(&json!({
            "resourceType": "Questionnaire", "url": "u",
            "item": [{"linkId": "a", "text": "A", "type": "attachment"}]
        }))
        .expect_err("attachment");
        assert!(e.to_string().contains("item[0] (a)") && e.to_string().contains("attachment"));
        let e = Questionnaire::parse(&json!({
            "resourceType": "Questionnaire", "url": "u",
            "item": [{"linkId": "a", "text": "A", "type": "integer",
                      "enableWhen": [{"question": "zz", "operator": "exists", "answerBoolean": true}]}]
        }))
        .expect_err("dangling");
        assert!(e.to_string().contains("zz"));
    }

    #[test]
    fn conditional_items_follow_earlier_answers() {
        let q = q();
        let (f, p) = q.read(&fields(&[
            ("any", "false"),
            ("count", "3"),
            ("meds#0/name", "x"),
        ]));
        assert!(p.is_empty());
        assert_eq!(
            f.answers.len(),
            1,
            "hidden items' answers are dropped: {f:?}"
        );
        assert!(q.missing(&f).is_empty(), "nothing hidden is required");
        let (f, _) = q.read(&fields(&[("any", "true")]));
        let missing: Vec<String> = q.missing(&f).into_iter().map(|p| p.path).collect();
        assert_eq!(missing, ["count", "meds#0/name"]);
        let (f, p) = q.read(&fields(&[
            ("any", "true"),
            ("count", "2"),
            ("severity", "1"),
            ("meds#0/name", "Diazepam"),
            ("meds#1/name", "Midazolam"),
            ("meds#1/when", "2026-11-30"),
            ("note", ""),
        ]));
        assert!(p.is_empty() && q.missing(&f).is_empty(), "{p:?}");
        let r = q.response(&f, "r1", "Patient/p1", "2026-12-05T10:00:00Z");
        assert_eq!(
            r["questionnaire"],
            "https://example.org/Questionnaire/seizures|2"
        );
        let items = r["item"].as_array().expect("items");
        assert_eq!(
            items.len(),
            5,
            "any, count, severity, two instances of meds: {r}"
        );
        assert_eq!(items[2]["answer"][0]["valueCoding"]["code"], "severe");
        assert_eq!(items[3]["item"][0]["answer"][0]["valueString"], "Diazepam");
        assert_eq!(items[4]["item"][1]["answer"][0]["valueDate"], "2026-11-30");
    }

    #[test]
    fn bad_answers_name_their_item() {
        let q = q();
        let (_, p) = q.read(&fields(&[
            ("any", "true"),
            ("count", "many"),
            ("meds#0/when", "30/11/2026"),
        ]));
        let paths: Vec<&str> = p.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(paths, ["count", "meds#0/when"]);
        assert!(p[0].message.contains("How many?"));
    }

    #[test]
    fn a_saved_answer_fills_the_form_again() {
        let q = q();
        let (f, _) = q.read(&fields(&[
            ("any", "true"),
            ("count", "1"),
            ("severity", "0"),
        ]));
        assert_eq!(f.form_values(&q.items[2], "severity"), ["0"]);
        assert_eq!(f.form_values(&q.items[0], "any"), ["true"]);
    }
}
