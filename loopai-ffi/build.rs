//! Link settings of libloopai.so that Cargo.toml cannot express.

fn main() {
    // The shared library's SONAME: programs linked with `-lloopai` record `libloopai.so.0`
    // and keep working across compatible releases. scripts/install-c-lib.sh installs
    // libloopai.so.<version> with the libloopai.so.0 and libloopai.so links.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly" | "illumos"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libloopai.so.0");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
