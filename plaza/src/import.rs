//! Importing a dataset from the console: a CSV or Parquet file sent from the browser, checked
//! whole by the same two-pass importer `aic dataset import` runs (pass 1 refuses what cannot be
//! imported, naming the column), then encoded into shards, stored on the storage nodes with the
//! most room and minted to the user's wallet. The upload is capped, and counted while it
//! arrives, so an oversized file is refused before it fills the disk.

use std::collections::BTreeMap;
use std::io::Write;

use actix_multipart::Multipart;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use aic_ledger::Amount;
use aic_protocol::manifest::ReplicaLocation;
use aic_protocol::messages::{NodeState, NodeStatus};
use aic_protocol::Role;
use aic_storage_node::import::{analyse, encode, ImportOptions};
use aic_storage_node::upload_client::UploadSink;
use askama::Template;
use futures::StreamExt;

use crate::actions::{see_other, signing, Signing};
use crate::forms::{FieldErrors, FormToken};
use crate::pages::{render, State};

/// The largest file the console takes; larger ones go through `aic dataset import`, which
/// streams from disk.
pub const MAX_UPLOAD_BYTES: u64 = 64 << 20;
/// The largest text field of the form.
const MAX_FIELD_BYTES: usize = 4096;

#[derive(Template)]
#[template(path = "import.html")]
struct ImportPage {
    title: &'static str,
    problems: Vec<String>,
    errors: FieldErrors,
    form: FormToken,
    fields: BTreeMap<String, String>,
    has_wallet: bool,
    max_mib: u64,
}

fn page(state: &State, errors: FieldErrors, fields: BTreeMap<String, String>) -> ImportPage {
    ImportPage {
        title: "Import a dataset",
        problems: Vec::new(),
        errors,
        form: state.forms.issue(),
        fields,
        has_wallet: state.wallet.is_some(),
        max_mib: MAX_UPLOAD_BYTES >> 20,
    }
}

/// The import form.
pub async fn form(state: web::Data<State>) -> HttpResponse {
    let mut fields = BTreeMap::new();
    fields.insert("replicas".to_string(), "2".to_string());
    fields.insert("fee".to_string(), "1".to_string());
    render(StatusCode::OK, &page(&state, FieldErrors::new(), fields))
}

/// What arrived: the text fields, and the file saved to a temporary directory.
struct Received {
    fields: BTreeMap<String, String>,
    file: Option<(tempfile::TempDir, std::path::PathBuf)>,
}

/// Reads the multipart body, refusing a file over the cap or a field over its size as it comes.
async fn receive(mut body: Multipart, errors: &mut FieldErrors) -> Received {
    let mut received = Received {
        fields: BTreeMap::new(),
        file: None,
    };
    while let Some(part) = body.next().await {
        let Ok(mut part) = part else {
            errors.insert("file".into(), "The upload was cut short; send it again.".into());
            return received;
        };
        let name = part.name().unwrap_or_default().to_string();
        if name == "file" {
            let file_name = part
                .content_disposition()
                .and_then(|d| d.get_filename())
                .unwrap_or_default()
                .to_string();
            let extension = std::path::Path::new(&file_name)
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let Some(extension) = extension.filter(|e| e == "csv" || e == "parquet") else {
                errors.insert("file".into(), "Choose a .csv or .parquet file.".into());
                return received;
            };
            let Ok(dir) = tempfile::tempdir() else {
                errors.insert("file".into(), "No room to receive the file here.".into());
                return received;
            };
            let stem: String = std::path::Path::new(&file_name)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("dataset")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(64)
                .collect();
            let path = dir.path().join(format!(
                "{}.{extension}",
                if stem.is_empty() { "dataset" } else { &stem }
            ));
            let Ok(mut out) = std::fs::File::create(&path) else {
                errors.insert("file".into(), "No room to receive the file here.".into());
                return received;
            };
            let mut size: u64 = 0;
            while let Some(chunk) = part.next().await {
                let Ok(chunk) = chunk else {
                    errors.insert("file".into(), "The upload was cut short; send it again.".into());
                    return received;
                };
                size += chunk.len() as u64;
                if size > MAX_UPLOAD_BYTES {
                    errors.insert(
                        "file".into(),
                        format!(
                            "The console takes files up to {} MiB; import a larger one with `aic dataset import`.",
                            MAX_UPLOAD_BYTES >> 20
                        ),
                    );
                    return received;
                }
                if out.write_all(&chunk).is_err() {
                    errors.insert("file".into(), "No room to receive the file here.".into());
                    return received;
                }
            }
            if size == 0 {
                errors.insert("file".into(), "The file is empty.".into());
                return received;
            }
            received.fields.insert("stem".into(), stem);
            received.file = Some((dir, path));
        } else {
            let mut value = Vec::new();
            while let Some(chunk) = part.next().await {
                let Ok(chunk) = chunk else {
                    return received;
                };
                if value.len() + chunk.len() > MAX_FIELD_BYTES {
                    errors.insert(name.clone(), "Too long.".into());
                    break;
                }
                value.extend_from_slice(&chunk);
            }
            received
                .fields
                .insert(name, String::from_utf8_lossy(&value).trim().to_string());
        }
    }
    received
}

/// The storage nodes up with the most free room, `count` of them.
fn placement(nodes: &[NodeStatus], count: usize) -> Vec<ReplicaLocation> {
    let mut up: Vec<&NodeStatus> = nodes
        .iter()
        .filter(|n| n.role == Role::Storage && n.state == NodeState::Up)
        .collect();
    let free = |n: &NodeStatus| {
        let held: u64 = n.holdings.iter().map(|h| h.bytes).sum();
        n.capacity.storage_bytes.saturating_sub(held)
    };
    up.sort_by_key(|n| std::cmp::Reverse(free(n)));
    up.into_iter()
        .take(count)
        .map(|n| ReplicaLocation {
            node: n.node_id.to_string(),
            quic_addr: n.quic_addr.clone(),
        })
        .collect()
}

/// Receives, checks, stores and mints; then the new dataset's page.
pub async fn import(state: web::Data<State>, body: Multipart) -> HttpResponse {
    let mut errors = FieldErrors::new();
    let received = receive(body, &mut errors).await;
    let fields = received.fields;
    let (key, attempt) = match signing(
        &state,
        fields.get("csrf").map(String::as_str),
        fields.get("idempotency").map(String::as_str),
    ) {
        Signing::Act { key, attempt } => (key, attempt),
        Signing::Answer(answer) => return answer,
    };
    let answer = |errors: FieldErrors| {
        state.forms.release(&attempt);
        render(
            StatusCode::UNPROCESSABLE_ENTITY,
            &page(&state, errors, fields.clone()),
        )
    };
    let label = fields.get("label").cloned().unwrap_or_default();
    if label.is_empty() {
        errors.insert("label".into(), "Name the column to predict.".into());
    }
    let regression = fields.get("kind").map(String::as_str) == Some("target");
    let fee = match fields.get("fee").map(|f| f.parse::<Amount>()) {
        Some(Ok(fee)) => Some(fee),
        _ => {
            errors.insert(
                "fee".into(),
                "The fee a job pays is an amount of AIC (0 for free).".into(),
            );
            None
        }
    };
    let replicas = match fields.get("replicas").map(|r| r.parse::<usize>()) {
        Some(Ok(n)) if (1..=aic_protocol::manifest::MAX_REPLICAS).contains(&n) => n,
        _ => {
            errors.insert(
                "replicas".into(),
                format!("Copies: 1 to {}.", aic_protocol::manifest::MAX_REPLICAS),
            );
            0
        }
    };
    if received.file.is_none() && !errors.contains_key("file") {
        errors.insert("file".into(), "Choose the file to import.".into());
    }
    let (Some((_dir, path)), Some(fee), true) = (received.file, fee, errors.is_empty()) else {
        return answer(errors);
    };
    let name = fields
        .get("name")
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| fields.get("stem").cloned().unwrap_or_else(|| "dataset".into()));
    // Pass 1, on a blocking thread: it reads the whole file.
    let options = ImportOptions {
        regression,
        ..ImportOptions::new(&label)
    };
    let analysed = {
        let (path, name) = (path.clone(), name.clone());
        tokio::task::spawn_blocking(move || analyse(&path, &name, &options, &|_| {})).await
    };
    let analysis = match analysed {
        Ok(Ok(analysis)) => analysis,
        Ok(Err(refusal)) => {
            errors.insert("file".into(), format!("Not imported, nothing stored: {refusal}"));
            return answer(errors);
        }
        Err(e) => {
            errors.insert("file".into(), format!("The check stopped: {e}"));
            return answer(errors);
        }
    };
    let nodes = match state.grid.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            errors.insert(
                "replicas".into(),
                format!("The storage nodes could not be listed: {e}"),
            );
            return answer(errors);
        }
    };
    let places = placement(&nodes, replicas);
    if places.len() < replicas {
        errors.insert(
            "replicas".into(),
            format!(
                "{replicas} copies need {replicas} storage nodes up; {} are.",
                places.len()
            ),
        );
        return answer(errors);
    }
    let storage = match state.grid.dial_storage(&places[0].quic_addr).await {
        Ok(client) => client,
        Err(e) => {
            errors.insert("replicas".into(), e);
            return answer(errors);
        }
    };
    let mut sink = UploadSink::new(&storage, |_| {});
    let mut manifest = match encode(&analysis, &mut sink, &|_| {}).await {
        Ok(manifest) => manifest,
        Err(e) => {
            let _ = sink.abort().await;
            errors.insert("file".into(), format!("Not imported, nothing stored: {e}"));
            return answer(errors);
        }
    };
    manifest.replicas = places;
    manifest.fee = fee.to_string();
    match sink.commit(&manifest, key.address().0).await {
        Ok(committed) => match committed.asset {
            Some(asset) => {
                let to = format!("/assets/{asset}?done=imported");
                state.forms.finish(&attempt, &to);
                see_other(&to)
            }
            None => {
                errors.insert(
                    "file".into(),
                    "Stored, but the storage node named no asset.".into(),
                );
                answer(errors)
            }
        },
        Err(e) => {
            errors.insert("file".into(), format!("Not stored (undone on every node): {e}"));
            answer(errors)
        }
    }
}
