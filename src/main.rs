/// mimalloc rather than glibc's malloc: a tokio server frees on one worker
/// thread what another allocated, and glibc serializes that on its arena
/// locks (measured on the unary and fan-out benches).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    policyhub::cli::main()
}
