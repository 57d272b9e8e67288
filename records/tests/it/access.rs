//! Right-of-access requests over a simulated clock: the rule's 30 days, the one extension
//! with reasons, the follow-up schedule, escalation and the stop at the policy's limit; the
//! scorecard from outcomes; and the letter's PDF, rendered and read back with poppler's
//! `pdftotext` (installed by `scripts/install-deps`) for the elements the rule requires.

use chrono::{DateTime, Duration, TimeZone, Utc};
use tessera_records::RecordsError;
use tessera_records::access_request::{
    AccessRequests, LetterDetails, Policy, RequestState, letter_lines, letter_pdf,
};
use tessera_records::identity::{Assurance, record_attended};

use crate::support::fresh;

const PATIENT: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn day(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap() + Duration::days(n)
}

async fn requests() -> (AccessRequests, tempfile::TempDir) {
    let (store, payouts, dir) = fresh().await;
    record_attended(&store, &payouts, PATIENT, true, Assurance::Ial2)
        .await
        .unwrap();
    (AccessRequests::new(store, Policy::default()), dir)
}

#[tokio::test]
async fn deadlines_follow_ups_escalation_and_the_stop() {
    let (roa, _d) = requests().await;
    // Unverified patients get no request.
    let refused = roa
        .prepare(
            "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b",
            "npi:1",
            "Clinic",
            day(0),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, RecordsError::Invalid(_)));

    let id = roa
        .prepare(
            PATIENT,
            "npi:1234567893",
            "Lakeside Family Practice",
            day(0),
        )
        .await
        .unwrap();
    assert_eq!(roa.get(&id).await.unwrap().state, RequestState::Prepared);
    // Nothing is scheduled before it is sent.
    assert!(roa.tick(day(100)).await.unwrap().is_empty());
    let r = roa.sent(&id, day(1)).await.unwrap();
    assert_eq!(r.due_at, Some(day(31)), "30 days from sending");
    assert_eq!(r.next_follow_up_at, Some(day(15)));

    // Day by day: a reminder at 14 days and at 28 (before the deadline), then after it.
    let mut log = vec![];
    for n in 2..=120 {
        for a in roa.tick(day(n)).await.unwrap() {
            log.push((n, a.kind));
        }
        // A second tick at the same moment does nothing more.
        assert!(roa.tick(day(n)).await.unwrap().is_empty());
    }
    assert_eq!(
        log,
        vec![
            (15, "follow_up"),
            (29, "follow_up"),
            (38, "follow_up"),
            (46, "escalate"),
            (52, "follow_up"),
            (77, "close")
        ],
        "follow-ups at 14, 28, 37 and 51 days after sending; escalated 14 days past the deadline; closed 45 days past it"
    );
    let r = roa.get(&id).await.unwrap();
    assert_eq!(r.state, RequestState::ClosedUnfulfilled);
    assert_eq!(r.follow_ups, 4);
    // Records that arrive after the stop are still taken in.
    let r = roa.received(&id, true, day(130)).await.unwrap();
    assert_eq!(r.state, RequestState::Received);
    let kinds: Vec<String> = roa
        .history(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, k, _)| k)
        .collect();
    assert_eq!(
        kinds,
        [
            "prepared",
            "sent",
            "follow_up",
            "follow_up",
            "follow_up",
            "escalated",
            "follow_up",
            "closed_unfulfilled",
            "received"
        ]
    );
}

#[tokio::test]
async fn one_extension_with_reasons_within_the_first_thirty_days() {
    let (roa, _d) = requests().await;
    let id = roa
        .prepare(PATIENT, "npi:1", "Hillcrest Hospital", day(0))
        .await
        .unwrap();
    roa.sent(&id, day(0)).await.unwrap();
    roa.acknowledged(&id, day(3)).await.unwrap();
    let mut log = vec![];
    for n in 1..20 {
        for a in roa.tick(day(n)).await.unwrap() {
            log.push((n, a.kind));
        }
    }
    assert_eq!(log, vec![(14, "follow_up")]);
    // Without reasons: refused.
    assert!(roa.extended(&id, "  ", day(20)).await.is_err());
    let r = roa
        .extended(&id, "records are archived off site", day(20))
        .await
        .unwrap();
    assert_eq!(r.state, RequestState::Extended);
    assert_eq!(r.due_at, Some(day(60)), "one 30-day extension");
    // Only one.
    let twice = roa
        .extended(&id, "still looking", day(25))
        .await
        .unwrap_err();
    assert!(twice.to_string().contains("one extension"), "{twice}");
    // Follow-ups that would fall before the extended deadline move to the day after it (and
    // never two on one day), and nothing escalates before the extended deadline has passed
    // by 14 days.
    let mut log = vec![];
    for n in 20..=80 {
        for a in roa.tick(day(n)).await.unwrap() {
            log.push((n, a.kind));
        }
    }
    assert_eq!(
        log,
        vec![
            (28, "follow_up"),
            (61, "follow_up"),
            (68, "follow_up"),
            (75, "escalate")
        ],
        "{log:?}"
    );
    // A late extension (after the first 30 days) does not move a deadline.
    let late = roa
        .prepare(PATIENT, "npi:2", "Late Clinic", day(0))
        .await
        .unwrap();
    roa.sent(&late, day(0)).await.unwrap();
    let e = roa.extended(&late, "busy", day(31)).await.unwrap_err();
    assert!(e.to_string().contains("within the first 30 days"), "{e}");
    assert_eq!(roa.get(&late).await.unwrap().due_at, Some(day(30)));
}

#[tokio::test]
async fn the_scorecard_rates_providers_from_outcomes() {
    let (roa, _d) = requests().await;
    // A good provider: answers in 10 and 12 days, complete, no fee.
    for (sent, got) in [(0, 10), (5, 17)] {
        let id = roa
            .prepare(PATIENT, "npi:good", "Prompt Clinic", day(sent))
            .await
            .unwrap();
        roa.sent(&id, day(sent)).await.unwrap();
        roa.received(&id, true, day(got)).await.unwrap();
    }
    // A slow one: 45 days, two follow-ups, a $25 fee, partial records.
    let id = roa
        .prepare(PATIENT, "npi:slow", "Slow Hospital", day(0))
        .await
        .unwrap();
    roa.sent(&id, day(0)).await.unwrap();
    roa.tick(day(14)).await.unwrap();
    roa.tick(day(28)).await.unwrap();
    roa.fee_requested(&id, 2_500, "usd", day(30)).await.unwrap();
    roa.received(&id, false, day(45)).await.unwrap();
    // One that never answers.
    let id = roa
        .prepare(PATIENT, "npi:silent", "Silent Centre", day(0))
        .await
        .unwrap();
    roa.sent(&id, day(0)).await.unwrap();
    for n in 1..=80 {
        roa.tick(day(n)).await.unwrap();
    }
    // Still open requests are not scored.
    let open = roa
        .prepare(PATIENT, "npi:open", "Open Clinic", day(0))
        .await
        .unwrap();
    roa.sent(&open, day(0)).await.unwrap();

    let card = roa.scorecard().await.unwrap();
    let names: Vec<(&str, u8)> = card
        .iter()
        .map(|s| (s.provider_name.as_str(), s.stars))
        .collect();
    assert_eq!(
        names,
        [
            ("Prompt Clinic", 5),
            ("Silent Centre", 1),
            ("Slow Hospital", 1)
        ]
    );
    let good = &card[0];
    assert_eq!(good.median_days, Some(11.0));
    assert_eq!((good.requests, good.fulfilled, good.charged), (2, 2, 0));
    let slow = &card[2];
    assert_eq!(slow.median_days, Some(45.0));
    assert_eq!(slow.largest_fee_minor, Some(2_500));
    assert!((slow.follow_ups_per_request - 2.0).abs() < 1e-9);
    assert_eq!(card[1].fulfilled, 0);
}

#[tokio::test]
async fn the_letter_carries_what_the_rule_requires() {
    let (roa, dir) = requests().await;
    let id = roa
        .prepare(
            PATIENT,
            "npi:1234567893",
            "Lakeside Family Practice",
            day(0),
        )
        .await
        .unwrap();
    let r = roa.get(&id).await.unwrap();
    let details = LetterDetails {
        full_name: "Zoë Quarry-Ødegaard".into(),
        birth_date: "1984-07-19".into(),
        address_lines: vec!["12 Elm Street".into(), "Springfield, IL 62701".into()],
        phone: Some("+1 217 555 0147".into()),
        email: None,
        record_numbers: vec!["MRN 004417".into()],
        deliver_to: "records+5a5a@tessera.example".into(),
        representative: Some(("Maren Quarry".into(), "parent".into())),
    };
    let lines = letter_lines(&r, &details, day(0), roa.policy());
    let pdf = letter_pdf(&lines);
    assert!(pdf.starts_with(b"%PDF-"));
    let path = dir.path().join("letter.pdf");
    std::fs::write(&path, &pdf).unwrap();
    // Kept for a person to look at.
    let artifacts =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts/records");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::copy(&path, artifacts.join("right-of-access-letter.pdf")).unwrap();
    let out = std::process::Command::new("pdftotext")
        .args(["-layout", path.to_str().unwrap(), "-"])
        .output()
        .expect("pdftotext (poppler-utils) is installed by scripts/install-deps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for needed in [
        "Zoë Quarry-Ødegaard",       // who (Latin-1 survives)
        "Date of birth: 1984-07-19", // identifying the individual
        "12 Elm Street",
        "MRN 004417",
        "To: Lakeside Family Practice", // to whom
        "45 CFR 164.524",               // the right invoked
        "designated record set",        // what
        "for all dates of service",
        "electronic copy", // form and format
        "Please send the copy to me at: records+5a5a@tessera.example", // where
        "within 30 days",  // the deadline
        "extend once, by no more than 30 days",
        "reasons for the delay",
        "cost-based fee", // fees
        "$6.50",
        "personal representative", // who signs for a child
        "Signature:",
        "2 March 2026", // dated
    ] {
        assert!(
            flat.contains(needed),
            "the letter lacks {needed:?}:\n{text}"
        );
    }
    assert!(flat.contains(&format!("Tessera request reference: {id}")));
}
