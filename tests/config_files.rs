//! The shipped configuration files parse, validate, and stay in step.

use std::path::Path;

use celeriac::config::{AutoscaleConfig, Config};

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
    for t in [
        "debug.echo",
        "debug.sleep",
        "debug.fail",
        "debug.panic",
        "debug.crash_worker",
        "debug.pid",
        "debug.spin",
        "debug.alloc",
        "debug.abort",
    ] {
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
    assert_eq!(
        format!("{:?}", default.broker),
        format!("{:?}", debug.broker)
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

/// `config/default.toml` says it lists every setting with its default: it must, so the
/// file parses to the same tree as a file that sets nothing but the route, and its
/// commented-out autoscale table holds the code's autoscale defaults.
#[test]
fn default_toml_lists_the_real_defaults() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config/default.toml")).unwrap();
    let file = load("default.toml");
    let minimal = Config::from_toml(
        r#"
        [pools.default]
        [tasks."spam.predict"]
        kind = "text_classifier"
        pool = "default"
        model = "models/spam-minilm"
        "#,
        root,
    )
    .unwrap();
    let (file, minimal) = (
        serde_json::to_value(&file).unwrap(),
        serde_json::to_value(&minimal).unwrap(),
    );
    assert_eq!(
        file, minimal,
        "default.toml differs from the code's defaults"
    );
    // Every setting is written out (a missing one would still parse to its default).
    for (table, fields) in [
        ("server", &minimal["server"]),
        ("results", &minimal["results"]),
        ("supervisor", &minimal["supervisor"]),
        ("broker", &minimal["broker"]),
        ("pools.default", &minimal["pools"]["default"]),
    ] {
        for key in fields.as_object().unwrap().keys() {
            let listed = text.lines().any(|l| {
                let l = l.trim_start_matches("# ");
                l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("[{table}.{key}]"))
            });
            assert!(listed, "config/default.toml does not list {table}.{key}");
        }
    }

    // The optional autoscale table, as commented out in the file.
    let block: String = text
        .lines()
        .skip_while(|l| !l.starts_with("# [pools.default.autoscale]"))
        .skip(1)
        .take_while(|l| l.starts_with("# ") && l.contains(" = "))
        .map(|l| {
            l.trim_start_matches("# ")
                .split(" #")
                .next()
                .unwrap()
                .trim()
                .to_string()
                + "\n"
        })
        .collect();
    assert!(
        block.contains("check_interval_ms"),
        "autoscale block: {block}"
    );
    let commented: AutoscaleConfig = toml::from_str(&block).unwrap();
    assert_eq!(
        serde_json::to_value(&commented).unwrap(),
        serde_json::to_value(AutoscaleConfig::with_bounds(commented.min, commented.max)).unwrap(),
        "the commented autoscale defaults differ from the code's"
    );
}
