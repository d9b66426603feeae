fn main() {
    // Platform link settings for a Node addon (on Linux the napi symbols resolve at load time).
    napi_build::setup();
}
