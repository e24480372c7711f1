//! `ninjarec`: parse the flags, dispatch, print errors as one line.

use clap::Parser;
use ninjarec::app;
use ninjarec::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        runtime.worker_threads(cli.threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ninjarec: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run(cli));
}

async fn run(cli: Cli) {
    let table = app::init_logging(cli.verbose, cli.quiet, cli.command.is_none());
    let result = match cli.command {
        None => app::record(cli.record, table).await,
        Some(Command::Serve(args)) => app::serve(args).await,
        Some(Command::Selftest(args)) => ninjarec::selftest::run(args).await,
        Some(Command::Offsets(args)) => app::offsets(&args),
    };
    if let Err(e) = result {
        eprintln!("ninjarec: {e:#}");
        std::process::exit(1);
    }
}
