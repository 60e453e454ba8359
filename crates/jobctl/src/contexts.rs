//! `jobctl config ...`: listing, choosing and editing the contexts of the config file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap::error::ErrorKind;

use crate::cli::{Cli, ConfigCommand, ConnectionArgs, Source};
use crate::config::{self, Config, Context};
use crate::error::{self, Failure};
use crate::output::plain_table;

/// Runs a `config` subcommand. `args` carries the connection flags `set-context` stores.
pub fn execute(command: ConfigCommand, args: &ConnectionArgs) -> Result<ExitCode, Failure> {
    let path = config::path().map_err(|e| error::config(&e))?;
    let mut config = Config::load(&path).map_err(|e| error::config(&e))?;
    let message = match command {
        ConfigCommand::GetContexts => contexts_table(&config),
        ConfigCommand::CurrentContext => match &config.current_context {
            Some(name) => name.clone(),
            None => {
                return Err(Failure::new(format!(
                    "no current context is set in {}",
                    path.display()
                ))
                .hint("choose one with `jobctl config use-context NAME`"));
            }
        },
        ConfigCommand::UseContext { name } => {
            existing(&config, &name, &path)?;
            config.current_context = Some(name.clone());
            config.save(&path).map_err(|e| error::config(&e))?;
            format!("current context: {name}")
        }
        ConfigCommand::SetContext { name } => {
            let created = set_context(&mut config, &name, args)?;
            config.save(&path).map_err(|e| error::config(&e))?;
            let verb = if created { "created" } else { "updated" };
            format!("context {name} {verb} in {}", path.display())
        }
        ConfigCommand::DeleteContext { name } => {
            existing(&config, &name, &path)?;
            config.contexts.remove(&name);
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            config.save(&path).map_err(|e| error::config(&e))?;
            format!("context {name} deleted from {}", path.display())
        }
    };
    let mut out = io::stdout().lock();
    match writeln!(out, "{message}").and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A closed stdout is no failure of the command, which is done.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(error::write(&e)),
    }
}

fn existing(config: &Config, name: &str, path: &Path) -> Result<(), Failure> {
    if config.contexts.contains_key(name) {
        Ok(())
    } else {
        Err(
            Failure::new(format!("no context named {name:?} in {}", path.display()))
                .hint("`jobctl config get-contexts` lists the contexts"),
        )
    }
}

/// Stores the flags given on the command line in context `name`; returns whether it is new.
fn set_context(config: &mut Config, name: &str, args: &ConnectionArgs) -> Result<bool, Failure> {
    let given = &args.given;
    let flag = |source: Source| source == Source::Flag;
    let any = [
        given.server,
        given.ca,
        given.cert,
        given.key,
        given.pki_dir,
        given.user,
    ]
    .into_iter()
    .any(flag);
    if !any {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "set-context needs at least one of --server, --ca, --cert, --key, --pki-dir, --user",
            )
            .exit();
    }
    let absolute = |path: &PathBuf| {
        std::path::absolute(path)
            .map_err(|e| error::system(&format!("cannot make {} absolute", path.display()), &e))
    };
    let created = !config.contexts.contains_key(name);
    let context = config.contexts.entry(name.to_owned()).or_default();
    if flag(given.server) {
        context.server = Some(args.server.clone());
    }
    if flag(given.user) {
        context.user = Some(args.user.clone());
    }
    for (source, value, slot) in [
        (given.ca, &args.ca, &mut context.ca),
        (given.cert, &args.cert, &mut context.cert),
        (given.key, &args.key, &mut context.key),
        (given.pki_dir, &args.pki_dir, &mut context.pki_dir),
    ] {
        if let (true, Some(path)) = (flag(source), value) {
            *slot = Some(absolute(path)?);
        }
    }
    Ok(created)
}

/// CURRENT, NAME, SERVER and IDENTITY of every context, by name.
fn contexts_table(config: &Config) -> String {
    let rows = config
        .contexts
        .iter()
        .map(|(name, context)| {
            let current = config.current_context.as_deref() == Some(name.as_str());
            vec![
                if current { "*" } else { "" }.to_owned(),
                name.clone(),
                context
                    .server
                    .clone()
                    .unwrap_or_else(|| "(default)".to_owned()),
                identity(context),
            ]
        })
        .collect();
    plain_table(Some(&["CURRENT", "NAME", "SERVER", "IDENTITY"]), rows)
}

/// The client certificate a context uses, as far as the context says.
fn identity(context: &Context) -> String {
    match (&context.cert, &context.user, &context.pki_dir) {
        (Some(cert), _, _) => cert.display().to_string(),
        (None, None, None) => "(default)".to_owned(),
        (None, user, dir) => format!(
            "{} in {}",
            user.as_deref().unwrap_or("alice"),
            dir.as_ref().map_or_else(
                || "the default PKI directory".to_owned(),
                |d| d.display().to_string()
            )
        ),
    }
}
