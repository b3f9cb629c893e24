// Binaries and tests of the engine link libtorch dynamically; record its directory as an rpath so
// they run without LD_LIBRARY_PATH. torch-sys finds libtorch through the LIBTORCH variable.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
}
