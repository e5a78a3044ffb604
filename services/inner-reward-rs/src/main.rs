use clap::Parser;
use inner_reward_rs::app::{self, RuntimeSettings};
use inner_reward_rs::{config::Config, logging};
use std::process::ExitCode;

fn main() -> ExitCode {
    let config = Config::parse();
    logging::init(config.log_format);
    let settings = RuntimeSettings {
        worker_threads: config.worker_threads,
        serving_cpus: config.serving_cpus.clone(),
    };
    let runtime = match settings.build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, ?settings, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = match app::App::bind(config).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        match app.run(app::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
