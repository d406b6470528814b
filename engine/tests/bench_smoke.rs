//! The benchmark library function runs every workload briefly and reports sane numbers.

use std::time::Duration;

use keel_engine::bench::{BenchParams, Workload, run};

#[test]
fn every_workload_runs_and_reports() {
    for (w, name) in [
        (Workload::Put, "put"),
        (Workload::Get, "get"),
        (Workload::Scan, "scan"),
        (Workload::Mixed, "mixed"),
    ] {
        assert_eq!(name.parse::<Workload>().unwrap(), w);
        let dir = tempfile::tempdir().unwrap();
        let mut params = BenchParams::new(dir.path());
        params.workload = w;
        params.writers = 2;
        params.keys = 500;
        params.duration = Duration::from_millis(300);
        params.db.wal.segment_bytes = 8 << 20;
        let mut ticks = 0;
        let report = run(&params, &mut |_| ticks += 1).unwrap();
        assert!(report.ops > 0, "{report}");
        assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
        assert!(ticks >= 1);
        if w == Workload::Put {
            assert_eq!(report.txns_logged, report.ops);
        }
    }
    assert!("nope".parse::<Workload>().is_err());
}
