//! A sample backend for the demo and benchmarks: answers every request with its name, the
//! path it saw, and `/healthz` with 200. `sample-backend NAME PORT [BODY_BYTES]`.

use parapet_tests::backend::Backend;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "backend".into());
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let body_bytes: Option<usize> = args.next().map(|p| p.parse()).transpose()?;
    let b = Backend::start_on(&name, format!("127.0.0.1:{port}").parse()?).await;
    if let Some(n) = body_bytes {
        b.set(parapet_tests::backend::Behaviour {
            body: Some(bytes::Bytes::from(vec![b'x'; n])),
            ..Default::default()
        });
    }
    println!("{name} listening on {}", b.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
