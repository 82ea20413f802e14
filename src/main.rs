fn main() -> std::process::ExitCode {
    policyhub::cli::main()
}
