//! Runs the engine benchmark without the CLI:
//! `cargo run --release -p keel-engine --example bench_engine -- <put|get|scan|mixed>
//! [writers] [value_bytes] [seconds] [dir]`. Without `dir`, a temporary directory under the
//! current one is used and removed afterwards.

use std::time::Duration;

use keel_engine::bench::{BenchParams, run};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let tmp = tempfile::tempdir_in(arg(4).unwrap_or("."))?;
    let mut params = BenchParams::new(tmp.path());
    params.workload = arg(0).unwrap_or("put").parse()?;
    params.writers = arg(1).unwrap_or("1").parse()?;
    params.value_bytes = arg(2).unwrap_or("128").parse()?;
    params.duration = Duration::from_secs(arg(3).unwrap_or("5").parse()?);
    let report = run(&params, &mut |p| {
        eprintln!("  {:.0}s: {} ops", p.elapsed.as_secs_f64(), p.ops)
    })?;
    println!("{report}");
    Ok(())
}
