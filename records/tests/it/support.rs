//! Shared helpers: a fresh store (the providers' stand-ins are `tessera_records::fixture`).

use tessera_payouts::Payouts;
use tessera_records::RecordsStore;

pub async fn fresh() -> (RecordsStore, Payouts, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = RecordsStore::connect(&url)
        .await
        .expect("open the records store");
    let payouts = Payouts::connect(&url)
        .await
        .expect("open the payouts store");
    (store, payouts, dir)
}
