//! Outgoing e-mail: patients' sign-in links.
//!
//! With `TESSERA_SMTP_URL` set (`smtp://HOST:PORT` for a relay on the same network,
//! `smtp://HOST:587?tls=required` for STARTTLS, `smtps://USER:PASSWORD@HOST` for implicit TLS;
//! lettre's URL form), messages go to that relay. Without it, each message is written as an
//! `.eml` file to `DATA_DIR/outbox/`, so the demo and a development server work with no mail
//! server (an operator reads the outbox). Messages carry the link and nothing about the
//! patient; errors name the relay, never the recipient.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Where mail goes.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Smtp {
        relay: String,
        transport: AsyncSmtpTransport<Tokio1Executor>,
    },
    Outbox(PathBuf),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The relay URL without its credentials, for messages.
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_string(),
    }
}

impl Mailer {
    /// From `TESSERA_SMTP_URL` and `TESSERA_MAIL_FROM` (default `Tessera
    /// <no-reply@tessera.invalid>`), else the outbox folder under the data directory.
    pub fn from_env(data_dir: &std::path::Path) -> Result<Mailer> {
        let from = std::env::var("TESSERA_MAIL_FROM")
            .unwrap_or_else(|_| "Tessera <no-reply@tessera.invalid>".into());
        let from: Mailbox = from.parse().context(
            "TESSERA_MAIL_FROM is not an address such as `Tessera <no-reply@example.org>`",
        )?;
        let transport = match std::env::var("TESSERA_SMTP_URL") {
            Ok(url) if !url.trim().is_empty() => {
                let relay = redact_url(&url);
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.trim())
                    .with_context(|| {
                        format!("TESSERA_SMTP_URL ({relay}) is not an SMTP URL such as smtp://127.0.0.1:25 or smtps://USER:PASSWORD@HOST")
                    })?
                    .build();
                Transport::Smtp { relay, transport }
            }
            _ => Transport::Outbox(data_dir.join("outbox")),
        };
        Ok(Mailer { from, transport })
    }

    /// Writes every message into `dir` (tests, and servers with no relay).
    pub fn outbox(dir: PathBuf) -> Mailer {
        Mailer {
            from: Mailbox::new(
                Some("Tessera".into()),
                "no-reply@tessera.invalid"
                    .parse()
                    .expect("a constant address parses"),
            ),
            transport: Transport::Outbox(dir),
        }
    }

    /// Where mail goes, for the startup banner.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp { relay, .. } => format!("SMTP relay {relay}"),
            Transport::Outbox(dir) => {
                format!("no SMTP relay: e-mails are written to {}", dir.display())
            }
        }
    }

    /// Sends a sign-in link.
    pub async fn send_sign_in_link(&self, to: &str, link: &str, minutes: i64) -> Result<()> {
        let to: Mailbox = to
            .parse()
            .context("the account's e-mail address is not one a message can be sent to")?;
        let text = format!(
            "Hello,\n\nSomeone (we hope you) asked to sign in to Tessera with this address. Open this link within {minutes} minutes to sign in:\n\n{link}\n\nThe link works once. If you did not ask for it, ignore this message: nothing happens until the link is opened.\n\nTessera\n"
        );
        let html = format!(
            "<p>Hello,</p><p>Someone (we hope you) asked to sign in to Tessera with this address. Open this link within {minutes} minutes to sign in:</p><p><a href=\"{link}\">Sign in to Tessera</a></p><p>The link works once. If you did not ask for it, ignore this message: nothing happens until the link is opened.</p><p>Tessera</p>",
            link = crate::api::web::esc(link)
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject("Your Tessera sign-in link")
            .multipart(MultiPart::alternative_plain_html(text, html))
            .context("composing the sign-in message")?;
        match &self.transport {
            Transport::Smtp { relay, transport } => {
                transport.send(message).await.map_err(|e| {
                    anyhow::anyhow!(
                        "the SMTP relay {relay} refused or failed: {}",
                        e.status()
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "no answer".into())
                    )
                })?;
            }
            Transport::Outbox(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the outbox {}", dir.display()))?;
                AsyncFileTransport::<Tokio1Executor>::new(dir)
                    .send(message)
                    .await
                    .with_context(|| format!("cannot write to the outbox {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_credentials_are_not_shown() {
        assert_eq!(
            redact_url("smtps://user:secret@mail.example.org:465"),
            "smtps://…@mail.example.org:465"
        );
        assert_eq!(redact_url("smtp://127.0.0.1:25"), "smtp://127.0.0.1:25");
    }

    #[tokio::test]
    async fn without_a_relay_messages_go_to_the_outbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Mailer::outbox(dir.path().join("outbox"));
        m.send_sign_in_link(
            "ada@example.org",
            "http://localhost:8080/me/sign-in?token=abc",
            15,
        )
        .await
        .expect("written");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("outbox"))
            .expect("outbox")
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].path()).expect("eml");
        assert!(text.contains("Subject: Your Tessera sign-in link"));
        assert!(text.contains("To: ada@example.org"));
        // The body is quoted-printable: `=` is written `=3D`, long lines end in soft breaks.
        let body = text.replace("=\r\n", "").replace("=3D", "=");
        assert!(body.contains("http://localhost:8080/me/sign-in?token=abc"));
    }
}
