//! What the console does for its user, each behind a form: send AIC, fund the inference escrow,
//! create an API key, list an asset for sale, withdraw a listing, buy, publish a trained model.
//! Every form is checked the same way before it acts — a fresh CSRF token this console signed,
//! an idempotency key not acted on before — then its fields are checked on the server, a wrong
//! one shown beside its field with nothing sent; the transaction is signed here with the user's
//! key, which never leaves this process.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use aic_ledger::tx::Call;
use aic_ledger::{Address, Amount};
use aic_protocol::AssetId;
use askama::Template;
use serde::Deserialize;

use crate::forms::{Attempt, FieldErrors};
use crate::grid::SubmitError;
use crate::pages::{error_page, State};

/// Whether a form may act: its CSRF token is good and its idempotency key is new. Otherwise the
/// answer to send instead (a refusal, or the page the first send of the same form led to).
enum Gate {
    Act(String),
    Answer(HttpResponse),
}

fn gate(state: &State, csrf: Option<&str>, idempotency: Option<&str>) -> Gate {
    if let Err(refusal) = state.forms.check_csrf(csrf) {
        return Gate::Answer(error_page(StatusCode::FORBIDDEN, &refusal.to_string()));
    }
    let Some(key) = idempotency.filter(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())) else {
        return Gate::Answer(error_page(
            StatusCode::BAD_REQUEST,
            "The form carried no idempotency key; reload the page and send it again.",
        ));
    };
    match state.forms.begin(key) {
        Attempt::First => Gate::Act(key.to_string()),
        Attempt::InFlight => Gate::Answer(error_page(
            StatusCode::CONFLICT,
            "This form is being acted on already; its result will show on the page it came from.",
        )),
        Attempt::Done(page) => Gate::Answer(see_other(&page)),
    }
}

pub fn see_other(page: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("location", page.to_string()))
        .finish()
}

/// An amount of AIC typed into a field (decimal, above zero).
pub fn amount_field(errors: &mut FieldErrors, field: &str, text: Option<&str>) -> Option<Amount> {
    let text = text.unwrap_or("").trim();
    match text.parse::<Amount>() {
        Ok(amount) if !amount.is_zero() => Some(amount),
        Ok(_) => {
            errors.insert(field.into(), "Enter an amount above zero.".into());
            None
        }
        Err(_) => {
            errors.insert(
                field.into(),
                format!("{text:?} is not an amount of AIC (a decimal number, up to 18 places)."),
            );
            None
        }
    }
}

/// Puts a refused transaction's reason beside `field`; answers the page for an unreachable grid.
fn refused(errors: &mut FieldErrors, field: &str, error: SubmitError) {
    match error {
        SubmitError::Refused(refusal) => {
            errors.insert(
                field.into(),
                format!("The ledger refused it (code {}): {refusal}", refusal.code()),
            );
        }
        SubmitError::Unavailable(why) => {
            errors.insert(
                field.into(),
                format!("The grid could not be reached, so nothing was sent: {why}"),
            );
        }
    }
}

/// A form that signs with the user's key: the key and the claimed idempotency key, or the answer
/// to send instead (no wallet, a refused token, a form already acted on).
pub enum Signing {
    Act {
        key: aic_ledger::Keypair,
        attempt: String,
    },
    Answer(HttpResponse),
}

pub fn signing(state: &State, csrf: Option<&str>, idempotency: Option<&str>) -> Signing {
    let Some(key) = state.wallet.clone() else {
        return Signing::Answer(no_wallet());
    };
    match gate(state, csrf, idempotency) {
        Gate::Act(attempt) => Signing::Act { key, attempt },
        Gate::Answer(page) => Signing::Answer(page),
    }
}

/// The answer to a form that needs the wallet this console was started without.
pub(crate) fn no_wallet() -> HttpResponse {
    error_page(
        StatusCode::FORBIDDEN,
        "This console was started without a wallet (aic plaza --wallet FILE), so it cannot sign.",
    )
}

#[derive(Deserialize)]
pub struct TransferForm {
    csrf: Option<String>,
    idempotency: Option<String>,
    to: Option<String>,
    amount: Option<String>,
}

/// Sends AIC from the user's wallet.
pub async fn transfer(state: web::Data<State>, form: web::Form<TransferForm>) -> HttpResponse {
    let (key, attempt) = match signing(&state, form.csrf.as_deref(), form.idempotency.as_deref()) {
        Signing::Act { key, attempt } => (key, attempt),
        Signing::Answer(page) => return page,
    };
    let mut errors = BTreeMap::new();
    let to = match form.to.as_deref().unwrap_or("").trim().parse::<Address>() {
        Ok(to) => Some(to),
        Err(_) => {
            errors.insert(
                "to".into(),
                "Not an address: 64 hexadecimal digits, as the recipient's Wallet page shows.".into(),
            );
            None
        }
    };
    let amount = amount_field(&mut errors, "amount", form.amount.as_deref());
    if let (Some(to), Some(amount)) = (to, amount) {
        match state.grid.submit(&key, Call::Transfer { to, amount }).await {
            Ok(_) => {
                state.forms.finish(&attempt, "/wallet?done=sent");
                return see_other("/wallet?done=sent");
            }
            Err(error) => refused(&mut errors, "amount", error),
        }
    }
    state.forms.release(&attempt);
    crate::pages::wallet_view(&state, errors, None).await
}

#[derive(Deserialize)]
pub struct AmountForm {
    csrf: Option<String>,
    idempotency: Option<String>,
    amount: Option<String>,
}

/// Moves AIC into the user's inference escrow, which pays for gateway calls.
pub async fn top_up(state: web::Data<State>, form: web::Form<AmountForm>) -> HttpResponse {
    let (key, attempt) = match signing(&state, form.csrf.as_deref(), form.idempotency.as_deref()) {
        Signing::Act { key, attempt } => (key, attempt),
        Signing::Answer(page) => return page,
    };
    let mut errors = BTreeMap::new();
    if let Some(amount) = amount_field(&mut errors, "top_up", form.amount.as_deref()) {
        match state.grid.submit(&key, Call::FundInference { amount }).await {
            Ok(_) => {
                state.forms.finish(&attempt, "/wallet?done=funded");
                return see_other("/wallet?done=funded");
            }
            Err(error) => refused(&mut errors, "top_up", error),
        }
    }
    state.forms.release(&attempt);
    crate::pages::wallet_view(&state, errors, None).await
}

#[derive(Deserialize)]
pub struct ApiKeyForm {
    csrf: Option<String>,
    idempotency: Option<String>,
    label: Option<String>,
}

/// Creates an API key for the gateway: its hash goes on the ledger, the key is shown once.
pub async fn create_api_key(state: web::Data<State>, form: web::Form<ApiKeyForm>) -> HttpResponse {
    let (key, attempt) = match signing(&state, form.csrf.as_deref(), form.idempotency.as_deref()) {
        Signing::Act { key, attempt } => (key, attempt),
        Signing::Answer(page) => return page,
    };
    let mut errors = BTreeMap::new();
    let label = form.label.as_deref().unwrap_or("").trim().to_string();
    if label.is_empty() || label.len() > 64 {
        errors.insert("label".into(), "Name the key (1 to 64 characters).".into());
    } else {
        let api_key = aic_gateway::access::new_key();
        let call = Call::CreateApiKey {
            key_hash: aic_gateway::access::key_hash(&api_key),
            label,
        };
        match state.grid.submit(&key, call).await {
            Ok(_) => {
                // Sent again, the form leads to the wallet: the key is shown this once only.
                state.forms.finish(&attempt, "/wallet");
                return crate::pages::wallet_view(&state, errors, Some(api_key)).await;
            }
            Err(error) => refused(&mut errors, "label", error),
        }
    }
    state.forms.release(&attempt);
    crate::pages::wallet_view(&state, errors, None).await
}

#[derive(Deserialize)]
pub struct AssetForm {
    csrf: Option<String>,
    idempotency: Option<String>,
    /// What to do: list, unlist, buy, publish.
    action: Option<String>,
    price: Option<String>,
    alias: Option<String>,
}

/// An asset page's forms: list it for sale, withdraw the listing, buy it, publish it.
pub async fn asset_action(
    state: web::Data<State>,
    id: web::Path<String>,
    form: web::Form<AssetForm>,
) -> HttpResponse {
    let Ok(asset) = id.parse::<AssetId>() else {
        return error_page(StatusCode::NOT_FOUND, "That is not an asset id.");
    };
    let (key, attempt) = match signing(&state, form.csrf.as_deref(), form.idempotency.as_deref()) {
        Signing::Act { key, attempt } => (key, attempt),
        Signing::Answer(page) => return page,
    };
    let mut errors = BTreeMap::new();
    let call = match form.action.as_deref() {
        Some("list") => amount_field(&mut errors, "price", form.price.as_deref())
            .map(|price| Call::ListAsset { asset, price }),
        Some("unlist") => Some(Call::UnlistAsset { asset }),
        Some("buy") => amount_field(&mut errors, "buy", form.price.as_deref())
            .map(|max_price| Call::BuyAsset { asset, max_price }),
        Some("publish") => {
            let alias = form.alias.as_deref().unwrap_or("").trim().to_string();
            let alias_ok = alias.is_empty()
                || (alias.len() <= aic_ledger::state::MAX_ALIAS_BYTES
                    && alias
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !alias_ok {
                errors.insert(
                    "alias".into(),
                    format!(
                        "An alias is up to {} letters, digits, '-' and '_'.",
                        aic_ledger::state::MAX_ALIAS_BYTES
                    ),
                );
            }
            let price = amount_field(&mut errors, "publish_price", form.price.as_deref());
            price
                .filter(|_| alias_ok)
                .map(|price_per_1k_rows| Call::PublishModel {
                    asset,
                    price_per_1k_rows,
                    alias: (!alias.is_empty()).then_some(alias),
                })
        }
        _ => {
            state.forms.release(&attempt);
            return error_page(
                StatusCode::BAD_REQUEST,
                "The form asked for no action this page offers.",
            );
        }
    };
    let field = match form.action.as_deref() {
        Some("publish") => "publish_price",
        Some("buy") => "buy",
        Some("unlist") => "unlist",
        _ => "price",
    };
    if let Some(call) = call {
        match state.grid.submit(&key, call).await {
            Ok(_) => {
                let page = format!("/assets/{asset}?done={}", form.action.as_deref().unwrap_or(""));
                state.forms.finish(&attempt, &page);
                return see_other(&page);
            }
            Err(error) => refused(&mut errors, field, error),
        }
    }
    state.forms.release(&attempt);
    crate::pages::asset_view(&state, asset, errors, None).await
}

/// What a finished action's page says, by the action's name in `?done=` (never the query's text).
pub fn notice_of(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "sent" => "Sent.",
        "funded" => "Your inference escrow was topped up.",
        "list" => "Listed for sale.",
        "unlist" => "The listing was withdrawn.",
        "buy" => "Bought: the asset is yours and the price went to the seller, in one transaction.",
        "publish" => "Published for inference: the gateway serves it now.",
        "imported" => "Imported: stored on the storage nodes and minted to you.",
        _ => return None,
    })
}

/// A ready-to-paste call to the gateway for a published model.
#[derive(Template)]
#[template(path = "snippet.txt", escape = "none")]
pub struct Snippet<'a> {
    pub gateway: &'a str,
    pub ca: &'a str,
    pub model: &'a str,
    pub body: &'a str,
}

/// An inference request body for a model trained on a dataset with these features: one input
/// per column, each a typical value (the mean, the first category).
pub fn sample_body(features: &[aic_protocol::encoding::Feature]) -> String {
    use aic_protocol::encoding::FeatureEncoding;
    let inputs: Vec<serde_json::Value> = features
        .iter()
        .map(|f| {
            let (datatype, value) = match &f.encoding {
                FeatureEncoding::Numeric { mean, .. } => {
                    ("FP32", serde_json::json!((mean * 100.0).round() / 100.0))
                }
                FeatureEncoding::Date { mean, .. } => (
                    "BYTES",
                    serde_json::json!(aic_protocol::encoding::date_text(mean.round() as i64)),
                ),
                FeatureEncoding::Categorical { categories } => (
                    "BYTES",
                    serde_json::json!(categories.first().cloned().unwrap_or_default()),
                ),
            };
            serde_json::json!({"name": f.name, "shape": [1], "datatype": datatype, "data": [value]})
        })
        .collect();
    serde_json::json!({ "inputs": inputs }).to_string()
}
