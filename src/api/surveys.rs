//! Study surveys on the patients' pages, and operators adding questionnaires.
//!
//! - `GET /me/surveys`: the surveys open to the patient, saved drafts, answered ones.
//! - `GET /me/surveys/{id}`: the form (server-rendered, no script): items whose `enableWhen`
//!   is not met yet are not shown; **Save** keeps the answers and shows the questions they
//!   open; **Add another** adds an instance of a repeating group; **Submit** checks required
//!   items and stores the QuestionnaireResponse through the ingest path, then credits the
//!   study's incentive at once (once per survey and patient: the payouts ledger's guarantee).
//! - `POST /v1/admin/questionnaires` (operators): adds a FHIR R4 Questionnaire for a study.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::fmt::Write as _;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_catalog::surveys::{Fields, Filled, Item, ItemType, Standing, Stored, Submitted};

use super::AppState;
use super::me::{Me, Refusal, date, form_me, layout, me, page};
use super::web::esc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/surveys", get(list))
        .route("/me/surveys/{id}", get(form_page).post(post_form))
        .route("/v1/admin/questionnaires", post(add_questionnaire))
}

async fn list(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let surveys = match s.catalog.surveys_for(me.patient()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "listing surveys");
            return Refusal::Unavailable.page();
        }
    };
    let mut b = String::new();
    if let Some(done) = q.get("done")
        && let Some((st, _)) = surveys.iter().find(|(st, _)| &st.id == done)
    {
        let _ = write!(
            b,
            "<p class=\"note\" role=\"status\">Thank you: your answers to “{}” are saved, and the study's incentive is on <a href=\"/me\">your earnings page</a>.</p>",
            esc(&st.questionnaire.title)
        );
    }
    b.push_str("<p>Studies ask these questions of the patients who share their data with them. Each completed survey earns the study's incentive once.</p>");
    if surveys.is_empty() {
        b.push_str("<p>No surveys are open right now.</p>");
    } else {
        b.push_str("<table><tr><th scope=\"col\">Survey</th><th scope=\"col\">Study</th><th scope=\"col\">Where you are</th><th scope=\"col\"></th></tr>");
        for (st, standing) in &surveys {
            let (status, action) = match standing {
                Standing::Open => ("not started".to_string(), "Answer"),
                Standing::Draft(at) => (format!("saved {}", date(at)), "Continue"),
                Standing::Done(at) => (format!("answered {}", date(at)), ""),
            };
            let link = if action.is_empty() {
                String::new()
            } else {
                format!(
                    "<a href=\"/me/surveys/{}\">{action}<span class=\"skip\"> {}</span></a>",
                    esc(&st.id),
                    esc(&st.questionnaire.title)
                )
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{link}</td></tr>",
                esc(&st.questionnaire.title),
                esc(st.study.as_deref().unwrap_or("")),
                esc(&status)
            );
        }
        b.push_str("</table>");
    }
    page(StatusCode::OK, layout("Surveys", Some(&me), &b))
}

async fn stored(s: &AppState, id: &str) -> Result<Stored, Response> {
    match s.catalog.questionnaires().await {
        Ok(v) => v.into_iter().find(|q| q.id == id).ok_or_else(|| {
            page(
                StatusCode::NOT_FOUND,
                layout(
                    "Survey",
                    None,
                    "<p role=\"alert\">There is no such survey. <a href=\"/me/surveys\">Your surveys</a></p>",
                ),
            )
        }),
        Err(_) => Err(Refusal::Unavailable.page()),
    }
}

fn field_id(path: &str) -> String {
    format!(
        "f-{}",
        path.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
    )
}

fn path_of(prefix: &str, link_id: &str) -> String {
    if prefix.is_empty() {
        link_id.to_string()
    } else {
        format!("{prefix}/{link_id}")
    }
}

struct Form<'a> {
    fields: &'a Fields,
    filled: &'a Filled,
    errors: &'a std::collections::BTreeMap<String, String>,
    hidden: usize,
}

impl Form<'_> {
    fn raw(&self, path: &str) -> Vec<String> {
        self.fields.get(path).cloned().unwrap_or_default()
    }

    fn items(&mut self, items: &[Item], prefix: &str, out: &mut String) {
        for item in items {
            let path = path_of(prefix, &item.link_id);
            if !self.filled.enabled(item, prefix) {
                self.hidden += 1;
                continue;
            }
            let required = if item.required {
                " <span class=\"muted\">(required)</span>"
            } else {
                ""
            };
            let id = field_id(&path);
            let error = self.errors.get(&path);
            let described = if error.is_some() {
                format!(" aria-describedby=\"{id}-err\" aria-invalid=\"true\"")
            } else {
                String::new()
            };
            let err_html = error
                .map(|m| format!("<p class=\"warn\" id=\"{id}-err\">{}</p>", esc(m)))
                .unwrap_or_default();
            match item.kind {
                ItemType::Display => {
                    let _ = write!(out, "<p>{}</p>", esc(&item.text));
                }
                ItemType::Group if item.repeats => {
                    let n = self.filled.instances.get(&path).copied().unwrap_or(1);
                    for i in 0..n {
                        let _ = write!(
                            out,
                            "<fieldset><legend>{} ({})</legend>",
                            esc(&item.text),
                            i + 1
                        );
                        self.items(&item.items, &format!("{path}#{i}"), out);
                        out.push_str("</fieldset>");
                    }
                    let _ = write!(
                        out,
                        "<input type=\"hidden\" name=\"{p}#count\" value=\"{n}\"><button type=\"submit\" class=\"secondary\" name=\"action\" value=\"add:{p}\">Add another: {}</button>",
                        esc(&item.text),
                        p = esc(&path)
                    );
                }
                ItemType::Group => {
                    let _ = write!(out, "<fieldset><legend>{}</legend>", esc(&item.text));
                    self.items(&item.items, &path, out);
                    out.push_str("</fieldset>");
                }
                ItemType::Boolean | ItemType::Choice => {
                    let raw = self.raw(&path);
                    let options: Vec<(String, String)> = if item.kind == ItemType::Boolean {
                        vec![("true".into(), "Yes".into()), ("false".into(), "No".into())]
                    } else {
                        item.options
                            .iter()
                            .enumerate()
                            .map(|(i, o)| (i.to_string(), o.label()))
                            .collect()
                    };
                    let input = if item.repeats { "checkbox" } else { "radio" };
                    let _ = write!(
                        out,
                        "<fieldset id=\"{id}\"{described}><legend>{}{required}</legend>{err_html}",
                        esc(&item.text)
                    );
                    for (j, (value, label)) in options.iter().enumerate() {
                        let _ = write!(
                            out,
                            "<label><input type=\"{input}\" id=\"{id}-{j}\" name=\"{}\" value=\"{}\"{}> {}</label>",
                            esc(&path),
                            esc(value),
                            if raw.contains(value) { " checked" } else { "" },
                            esc(label)
                        );
                    }
                    out.push_str("</fieldset>");
                }
                _ => {
                    let value = self.raw(&path).into_iter().next().unwrap_or_default();
                    let _ = write!(
                        out,
                        "<label for=\"{id}\">{}{required}</label>{err_html}",
                        esc(&item.text)
                    );
                    let control = match item.kind {
                        ItemType::Text => format!(
                            "<textarea id=\"{id}\" name=\"{}\" rows=\"4\" cols=\"50\"{described}>{}</textarea>",
                            esc(&path),
                            esc(&value)
                        ),
                        kind => {
                            let (t, extra) = match kind {
                                ItemType::Integer => {
                                    ("number", " step=\"1\" inputmode=\"numeric\"")
                                }
                                ItemType::Decimal => {
                                    ("number", " step=\"any\" inputmode=\"decimal\"")
                                }
                                ItemType::Date => ("date", ""),
                                _ => ("text", ""),
                            };
                            format!(
                                "<input id=\"{id}\" name=\"{}\" type=\"{t}\"{extra} value=\"{}\"{described}>",
                                esc(&path),
                                esc(&value)
                            )
                        }
                    };
                    out.push_str(&control);
                }
            }
        }
    }
}

fn render_form(
    me: &Me,
    st: &Stored,
    fields: &Fields,
    problems: &[tessera_catalog::surveys::Problem],
) -> String {
    let q = &st.questionnaire;
    let (filled, _) = q.read(fields);
    let errors: std::collections::BTreeMap<String, String> = problems
        .iter()
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect();
    let mut b = String::new();
    if !problems.is_empty() {
        b.push_str("<div class=\"warn\" role=\"alert\"><p>Some answers are missing or need fixing (your answers so far are saved):</p><ul>");
        for p in problems {
            let _ = write!(
                b,
                "<li><a href=\"#{}\">{}</a></li>",
                field_id(&p.path),
                esc(&p.message)
            );
        }
        b.push_str("</ul></div>");
    }
    if let Some(d) = &q.description {
        let _ = write!(b, "<p>{}</p>", esc(d));
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/me/surveys/{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&st.id),
        me.csrf
    );
    let mut form = Form {
        fields,
        filled: &filled,
        errors: &errors,
        hidden: 0,
    };
    form.items(&q.items, "", &mut b);
    if form.hidden > 0 {
        b.push_str("<p class=\"muted\">Some questions depend on your answers: press <b>Save</b> to see the ones your answers open.</p>");
    }
    b.push_str("<p><button type=\"submit\" name=\"action\" value=\"save\" class=\"secondary\">Save</button> <button type=\"submit\" name=\"action\" value=\"submit\">Submit</button></p></form>");
    layout(&q.title, Some(me), &b)
}

async fn form_page(State(s): State<AppState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let st = match stored(&s, &id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let fields = match s.catalog.draft(me.patient(), &st.id).await {
        Ok(f) => f,
        Err(_) => return Refusal::Unavailable.page(),
    };
    page(StatusCode::OK, render_form(&me, &st, &fields, &[]))
}

async fn post_form(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let me = match form_me(&s, &h, &pairs).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let st = match stored(&s, &id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut fields = Fields::new();
    let mut action = "save".to_string();
    for (k, v) in pairs {
        match k.as_str() {
            "csrf" => {}
            "action" => action = v,
            _ if k.len() <= 200 && fields.len() < 2000 => fields.entry(k).or_default().push(v),
            _ => {}
        }
    }
    if let Some(group) = action.strip_prefix("add:") {
        let key = format!("{group}#count");
        let n = fields
            .get(&key)
            .and_then(|v| v.first())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1);
        fields.insert(key, vec![(n + 1).min(50).to_string()]);
        action = "save".into();
    }
    if action != "submit" {
        return match s.catalog.save_draft(me.patient(), &st.id, &fields).await {
            Ok(()) => Redirect::to(&format!("/me/surveys/{}", st.id)).into_response(),
            Err(_) => Refusal::Unavailable.page(),
        };
    }
    match s.catalog.submit_survey(me.patient(), &st, &fields).await {
        Ok(Submitted::Incomplete(problems)) => page(
            StatusCode::BAD_REQUEST,
            render_form(&me, &st, &fields, &problems),
        ),
        Ok(Submitted::Stored { questionnaire }) => {
            // The study's incentive, at once (and once: the ledger's idempotency key).
            if let Some(svc) = s.patients.as_ref() {
                match svc
                    .payouts
                    .survey_completed(me.patient(), &questionnaire)
                    .await
                {
                    Ok(c) => tracing::info!(credits = c.len(), "survey incentive credited"),
                    Err(e) => {
                        tracing::error!(error = %e, "crediting a survey incentive (reconciliation will retry)")
                    }
                }
            }
            Redirect::to(&format!("/me/surveys?done={}", st.id)).into_response()
        }
        Err(e) if e.is_user_error() => page(
            StatusCode::BAD_REQUEST,
            layout(
                &st.questionnaire.title,
                Some(&me),
                &format!(
                    "<p class=\"warn\" role=\"alert\">{}</p>",
                    esc(&e.to_string())
                ),
            ),
        ),
        Err(e) => {
            tracing::error!(error = %e, "storing a survey");
            Refusal::Unavailable.page()
        }
    }
}

#[derive(Deserialize)]
struct AddQuestionnaire {
    questionnaire: Value,
    study: String,
}

/// `POST /v1/admin/questionnaires` `{"questionnaire": {...}, "study": "ID"}` (operators; the
/// same audited decision as every admin route).
async fn add_questionnaire(
    State(s): State<AppState>,
    caller: super::auth::Caller,
    body: Bytes,
) -> Response {
    if let Err(e) = super::admin::admin(
        &s,
        &caller,
        tessera_licensing::decision::AdminAction::Operate,
        "add_questionnaire",
        "questionnaires".into(),
    )
    .await
    {
        return e.into_response();
    }
    let Ok(req) = serde_json::from_slice::<AddQuestionnaire>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": "body", "message": "send {\"questionnaire\": <a FHIR R4 Questionnaire>, \"study\": \"<study id>\"}"}})),
        )
            .into_response();
    };
    add(&s, &req.questionnaire, &req.study).await
}

async fn add(s: &AppState, q: &Value, study: &str) -> Response {
    let Some(svc) = s.patients.as_ref() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let stored = match s.catalog.add_questionnaire(q, Some(study)).await {
        Ok(v) => v,
        Err(e) if e.is_user_error() => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"code": "questionnaire", "message": e.to_string()}})),
            )
                .into_response();
        }
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    match svc
        .payouts
        .attach_questionnaire(study, &stored.questionnaire.url)
        .await
    {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({"id": stored.id, "url": stored.questionnaire.url, "title": stored.questionnaire.title, "study": study})),
        )
            .into_response(),
        Err(e @ tessera_payouts::PayoutsError::NotFound(_)) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "study", "message": e.to_string()}})),
        )
            .into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
