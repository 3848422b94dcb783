//! The shipped configuration files parse, validate, and stay in step.

use std::path::Path;

use celeriac::config::Config;

fn load(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    let c = Config::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    c
}

#[test]
fn default_and_debug_configs_validate() {
    let default = load("default.toml");
    assert!(default.tasks.contains_key("spam.predict"));
    assert_eq!(default.tasks["spam.predict"].kind, "text_classifier");
    let debug = load("debug.toml");
    for t in ["debug.echo", "debug.sleep", "debug.fail", "debug.panic"] {
        assert!(debug.tasks.contains_key(t), "debug.toml registers {t}");
    }
}

#[test]
fn debug_config_is_the_default_plus_debug_tasks() {
    let default = load("default.toml");
    let debug = load("debug.toml");
    // Same settings everywhere the default has them.
    assert_eq!(
        format!("{:?}", default.server),
        format!("{:?}", debug.server)
    );
    assert_eq!(
        format!("{:?}", default.results),
        format!("{:?}", debug.results)
    );
    assert_eq!(
        format!("{:?}", default.supervisor),
        format!("{:?}", debug.supervisor)
    );
    for (name, pool) in &default.pools {
        assert_eq!(
            format!("{pool:?}"),
            format!("{:?}", debug.pools[name]),
            "pool {name}"
        );
    }
    for (name, task) in &default.tasks {
        assert_eq!(
            format!("{task:?}"),
            format!("{:?}", debug.tasks[name]),
            "task {name}"
        );
    }
    // Only debug tasks are added.
    for name in debug
        .tasks
        .keys()
        .filter(|n| !default.tasks.contains_key(*n))
    {
        assert!(name.starts_with("debug."), "{name}");
    }
}
