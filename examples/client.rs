//! The routing client against a running cluster: `ringkv demo` in one terminal (placement on
//! 127.0.0.1:2379), then `cargo run --example client` in another.

use std::time::Duration;

use ringkv::client::{Client, ClientConfig};

#[tokio::main]
async fn main() -> Result<(), ringkv::client::Error> {
    let client = Client::connect(ClientConfig::new(["127.0.0.1:2379"])).await?;

    client.put("example/greeting", "hello").await?;
    let greeting = client.get("example/greeting").await?;
    println!(
        "get example/greeting -> {:?}",
        greeting.as_deref().map(String::from_utf8_lossy)
    );

    client
        .put_with_ttl("example/session", "expires soon", Duration::from_secs(30))
        .await?;

    // A batch spanning regions: cut by region, the parts sent in parallel.
    let pairs: Vec<(String, String)> = (0..20)
        .map(|i| (format!("example/item-{i:02}"), format!("value {i}")))
        .collect();
    client.batch_put(&pairs, None).await?;
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let found = client.batch_get(&keys).await?;
    println!("batch_get of {} keys found {}", keys.len(), found.len());

    // A counter through compare-and-swap, retried until it wins.
    let mut current = client.get("example/counter").await?;
    loop {
        let next = match &current {
            Some(value) => String::from_utf8_lossy(value).parse::<u64>().unwrap_or(0) + 1,
            None => 1,
        };
        let outcome = client
            .compare_and_swap(
                "example/counter",
                current.as_deref(),
                Some(next.to_string().as_bytes()),
            )
            .await?;
        if outcome.succeeded {
            println!("counter is now {next}");
            break;
        }
        current = outcome.current;
    }

    // Scan in pages of 8, following the cursor region by region to the end of the ring.
    let mut cursor = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.scan(&cursor, b"example/", 8).await?;
        pages += 1;
        for (key, value) in &page.pairs {
            println!(
                "  {}\t{}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            );
        }
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    println!("scanned example/ in {pages} pages");

    let keys: Vec<String> = pairs.into_iter().map(|(k, _)| k).collect();
    client.batch_delete(&keys).await?;
    Ok(())
}
