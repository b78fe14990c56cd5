//! An axum service calling another through the embedded mesh, with a 90/10 canary split.
//!
//! `cargo run -p mesh-examples --example axum_canary`

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let canary = mesh_examples::canary::start(None).await?;
    println!(
        "frontend on http://{} calls `hello` (v1 {}, v2 {}) through the mesh",
        canary.frontend, canary.backends[0], canary.backends[1]
    );
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut answers = BTreeMap::new();
    for _ in 0..200 {
        let response = client
            .get(format!("http://{}/", canary.frontend).parse()?)
            .await?;
        let body = response.into_body().collect().await?.to_bytes();
        *answers
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_insert(0) += 1;
    }
    for (answer, count) in answers {
        println!("{count:>4}  {answer}");
    }
    Ok(())
}
