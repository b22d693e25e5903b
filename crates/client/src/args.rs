//! The command line, `client [ADDR] [--name NAME]`, and the one rule the client checks about a
//! login name before sending it.

/// What `client --help` prints, and what a usage error is followed by.
pub const USAGE: &str = "\
usage: client [ADDR] [--name NAME]

  ADDR         the chat server's address (default 127.0.0.1:8080)
  --name NAME  log in as NAME instead of being asked for a name";

/// Where the client connects when no address is given: where the servers listen by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Connect and chat.
    Chat(Args),
    /// Print [`USAGE`] and exit.
    Help,
}

/// The settings of one chat session.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// The server's address, as typed: `TcpStream::connect` resolves host names too.
    pub addr: String,
    /// The login name, if given with `--name`; otherwise the client asks for one.
    pub name: Option<String>,
}

/// Parses the arguments after the program name. The error is a sentence for the user.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut addr = None;
    let mut name = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--name" => Some(
                args.next()
                    .ok_or("`--name` needs a value: `--name alice`")?,
            ),
            _ => arg.strip_prefix("--name=").map(String::from),
        };
        if let Some(value) = value {
            name = Some(login_name(&value).ok_or("the name given with `--name` is empty")?);
        } else if arg.starts_with('-') {
            return Err(format!("unknown option `{arg}`"));
        } else if addr.is_none() {
            addr = Some(arg);
        } else {
            return Err(format!(
                "unexpected argument `{arg}`: give one address at most"
            ));
        }
    }
    Ok(Command::Chat(Args {
        addr: addr.unwrap_or_else(|| DEFAULT_ADDR.to_string()),
        name,
    }))
}

/// The login name in `line`, trimmed as the server trims it; `None` if it is blank.
///
/// Blank is the only thing the client refuses, because a blank name can never work. Whether a
/// name is taken or allowed is the server's decision, and it says so with an `error:` line.
pub fn login_name(line: &str) -> Option<String> {
    let name = line.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(line: &str) -> Result<Command, String> {
        parse(line.split_whitespace().map(String::from))
    }

    fn chat(addr: &str, name: Option<&str>) -> Result<Command, String> {
        Ok(Command::Chat(Args {
            addr: addr.to_string(),
            name: name.map(String::from),
        }))
    }

    /// With no arguments the client connects to the servers' default address and asks a name.
    #[test]
    fn defaults() {
        assert_eq!(parse_words(""), chat("127.0.0.1:8080", None));
    }

    /// The address and `--name` may come in either order, and `--name=NAME` works too.
    #[test]
    fn address_and_name_in_any_order() {
        let want = chat("10.0.0.1:9000", Some("alice"));
        assert_eq!(parse_words("10.0.0.1:9000 --name alice"), want);
        assert_eq!(parse_words("--name alice 10.0.0.1:9000"), want);
        assert_eq!(parse_words("--name=alice 10.0.0.1:9000"), want);
    }

    /// `--help` wins over everything else on the line.
    #[test]
    fn help() {
        assert_eq!(parse_words("-h"), Ok(Command::Help));
        assert_eq!(parse_words("somewhere --help --bogus"), Ok(Command::Help));
    }

    /// Mistakes are errors that name the offending argument, never a silent default.
    #[test]
    fn usage_errors() {
        assert!(parse_words("--name").unwrap_err().contains("--name"));
        assert!(parse_words("--bogus").unwrap_err().contains("--bogus"));
        assert!(parse_words("a:1 b:2").unwrap_err().contains("b:2"));
        assert!(parse(["--name".to_string(), "  ".to_string()]).is_err());
    }

    /// A login name is trimmed like the server trims it, and a blank one is refused.
    #[test]
    fn login_names() {
        assert_eq!(login_name("  alice \r"), Some("alice".to_string()));
        assert_eq!(login_name(" \t "), None);
    }
}
