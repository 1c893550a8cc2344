//! `chatclient`: the terminal client. See `chatclient --help`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use chat::client::{self, Input, Output, Style};
use clap::Parser;
use parking_lot::Mutex;
use rustyline::{DefaultEditor, ExternalPrinter};

#[derive(Debug, Parser)]
#[command(version, about = "Chat client: interactive on a terminal, line-oriented for scripts")]
struct Args {
    /// Server address.
    #[arg(long, conflicts_with = "host")]
    addr: Option<String>,
    /// Server host, as in `chatclient 127.0.0.1 6000`.
    host: Option<String>,
    /// Server port, with HOST.
    #[arg(requires = "host")]
    port: Option<u16>,
    /// When the connection is lost while logged in, connect again, log in again and resend
    /// the messages whose outcome had not come (nothing is lost or shown twice).
    #[arg(long)]
    reconnect: bool,
}

/// A terminal: line editing and history; incoming messages printed above the line being typed.
struct Terminal {
    editor: DefaultEditor,
}

impl Input for Terminal {
    fn line(&mut self, prompt: &str) -> Option<String> {
        let line = self.editor.readline(prompt).ok()?;
        if !line.trim().is_empty() {
            let _ = self.editor.add_history_entry(line.as_str());
        }
        Some(line)
    }

    fn secret(&mut self, prompt: &str) -> Option<String> {
        rpassword::prompt_password(prompt).ok()
    }
}

struct TerminalOutput(Mutex<Box<dyn ExternalPrinter + Send>>);

impl Output for TerminalOutput {
    fn print(&self, line: &str) {
        if self.0.lock().print(format!("{line}\n")).is_err() {
            println!("{line}");
        }
    }
}

/// A script: one command per line on stdin, one event per line on stdout.
struct Script(std::io::StdinLock<'static>);

impl Input for Script {
    fn line(&mut self, _prompt: &str) -> Option<String> {
        let mut line = String::new();
        match self.0.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_owned()),
        }
    }

    fn secret(&mut self, prompt: &str) -> Option<String> {
        self.line(prompt)
    }
}

struct Stdout;

impl Output for Stdout {
    fn print(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let addr = match (args.addr, args.host, args.port) {
        (Some(addr), _, _) => addr,
        (None, Some(host), port) => format!("{host}:{}", port.unwrap_or(6000)),
        (None, None, _) => "127.0.0.1:6000".to_owned(),
    };
    // The server went away while the user sat at a prompt: say so and leave.
    let exit = Box::new(|| std::process::exit(1));
    let result = if std::io::stdin().is_terminal() {
        let mut editor = match DefaultEditor::new() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("chatclient: terminal: {e}");
                return ExitCode::FAILURE;
            }
        };
        let printer: Box<dyn ExternalPrinter + Send> = match editor.create_external_printer() {
            Ok(p) => Box::new(p),
            Err(e) => {
                eprintln!("chatclient: terminal: {e}");
                return ExitCode::FAILURE;
            }
        };
        let out = Arc::new(TerminalOutput(Mutex::new(printer)));
        client::run(&addr, Style::Human, args.reconnect, &mut Terminal { editor }, out, exit)
    } else {
        client::run(&addr, Style::Script, args.reconnect, &mut Script(std::io::stdin().lock()), Arc::new(Stdout), exit)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatclient: {e}");
            ExitCode::FAILURE
        }
    }
}
