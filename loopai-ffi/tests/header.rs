//! The committed header `include/loopai.h` must be exactly what cbindgen generates from
//! `src/lib.rs` and the modules it declares (one per C type, parsed in declaration order).
//! `LOOPAI_BLESS=1 cargo test -p loopai-ffi --test header` rewrites it.

use std::path::Path;

#[test]
fn committed_header_matches_generated() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("loopai-ffi/cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen failed on loopai-ffi/src/lib.rs");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("header is UTF-8");

    let header = crate_dir.join("../include/loopai.h");
    if std::env::var_os("LOOPAI_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&header, &generated).expect("write include/loopai.h");
        return;
    }
    let committed = std::fs::read_to_string(&header).unwrap_or_default();
    assert!(
        committed == generated,
        "include/loopai.h is stale: regenerate it with `LOOPAI_BLESS=1 cargo test -p loopai-ffi --test header` and commit it\n--- generated ---\n{generated}"
    );
}
