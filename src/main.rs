//! The `capgate` binary.

fn main() -> std::process::ExitCode {
    capgate::main()
}
