//! The parts of a benchmark asked for on its command line: `cargo bench --bench NAME --
//! PART ...` runs those, none named runs all. A test-mode run (`cargo test --benches`,
//! which passes no `--bench`) runs nothing.

/// The parts asked for, or `None` (after saying how to run it) in a test-mode run.
pub fn asked(name: &str) -> Option<Parts> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/{name}.rs: run with `cargo bench --bench {name}`");
        return None;
    }
    Some(Parts(
        std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect(),
    ))
}

pub struct Parts(Vec<String>);

impl Parts {
    /// Whether `what` is to run: named, or nothing named.
    pub fn want(&self, what: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|o| o == what)
    }
}
