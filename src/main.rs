//! The `micro-tomcat` binary: parse flags, call the library. Exit 0 ok, 1 bad config or usage, 2 runtime failure.

use std::process::ExitCode;

use clap::Parser;
use micro_tomcat::cli::{Cli, Command};
use micro_tomcat::config::{ClusterConfig, NodeConfig};
use micro_tomcat::node::Node;
use micro_tomcat::ops::reload::LogControl;
use micro_tomcat::pid_file::PidFile;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("{}", micro_tomcat::cli::usage_error_line(&err));
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::CheckConfig { file } => {
            // The secrets are checked as `run` would load them: the environment over the files.
            let checked = ClusterConfig::load(&file).and_then(|config| {
                let secrets = config.check_secrets(|name| std::env::var_os(name))?;
                Ok((config, secrets))
            });
            match checked {
                Ok((config, secrets)) => {
                    println!(
                        "{}: ok\n{}\n{}",
                        file.display(),
                        config.describe(),
                        secrets.describe()
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Status(args) => runtime(async move {
            match micro_tomcat::cli::status(&args).await {
                Ok(text) => {
                    print!("{text}");
                    if !text.ends_with('\n') {
                        println!();
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(err.exit_code())
                }
            }
        }),
        Command::Backup {
            node,
            out,
            token_file,
        } => runtime(async move {
            report(micro_tomcat::cli::backup(&node, &out, token_file.as_deref()).await)
        }),
        Command::Restore {
            file,
            node,
            token_file,
        } => runtime(async move {
            report(micro_tomcat::cli::restore(&node, &file, token_file.as_deref()).await)
        }),
        Command::Drain(args) => runtime(node_action(args, "drain")),
        Command::Undrain(args) => runtime(node_action(args, "undrain")),
        Command::Run(args) => {
            let config = match NodeConfig::resolve(&args.overrides()) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(1);
                }
            };
            let log = init_logging(config.cluster.logging.level.as_deref());
            runtime(run_node(config, log))
        }
    }
}

async fn node_action(args: micro_tomcat::cli::NodeActionArgs, action: &'static str) -> ExitCode {
    match micro_tomcat::cli::node_action(&args, action).await {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn report(result: Result<String, micro_tomcat::cli::StatusError>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn runtime(future: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            ExitCode::from(2)
        }
    }
}

/// Installs the log subscriber: `RUST_LOG`, else `<logging level>`, else the default filter. Returns
/// the control a config reload uses to change the filter.
fn init_logging(configured: Option<&str>) -> LogControl {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            configured.unwrap_or(micro_tomcat::logging::DEFAULT_LOG_FILTER),
        )
    });
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(micro_tomcat::logging::throttle_foreign_warnings()),
        )
        .init();
    std::sync::Arc::new(move |level: &str| {
        let filter =
            tracing_subscriber::EnvFilter::try_new(level).map_err(|err| err.to_string())?;
        handle.reload(filter).map_err(|err| err.to_string())
    })
}

async fn run_node(config: NodeConfig, log: LogControl) -> ExitCode {
    println!("{}", micro_tomcat::node::describe_startup(&config));
    let listener = match tokio::net::TcpListener::bind(config.me.http).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: cannot listen for HTTP on {}: {err}", config.me.http);
            return ExitCode::from(2);
        }
    };
    // Held until the node returns; dropping it removes the file.
    let _pid_file = match PidFile::create(&config.data_dir) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_to_cancel(shutdown.clone()));
    let demo = micro_tomcat::apps::demo::router(config.me.name.clone());
    let node = Node::builder(config)
        .app(demo)
        .listener(listener)
        .log_control(log);
    match node.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn signal_to_cancel(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    shutdown.cancel();
}
