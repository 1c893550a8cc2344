/// Error numbers of PROTOCOL.md ("Replies and errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    Ok = 0,
    /// Login: id or password invalid; register: name taken or invalid.
    Credentials = 1,
    AlreadyOnline = 2,
    NotLoggedIn = 3,
    BadRequest = 4,
    UnknownMsgId = 5,
    NoSuchUser = 6,
    NoSuchGroup = 7,
    NotMember = 8,
    TooLarge = 9,
    Unavailable = 10,
    Forbidden = 11,
    MailboxFull = 12,
    /// Too many failed logins or registrations; the reply says when to retry.
    TooManyAttempts = 14,
}

impl Errno {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The text sent as `errmsg` when the situation needs no more detail.
    pub fn message(self) -> &'static str {
        match self {
            Errno::Ok => "ok",
            Errno::Credentials => "id or password is invalid!",
            // The canonical client prints this text as is.
            Errno::AlreadyOnline => "this account is using, input another!",
            Errno::NotLoggedIn => "not logged in",
            Errno::BadRequest => "bad request",
            Errno::UnknownMsgId => "unknown msgid",
            Errno::NoSuchUser => "no such user",
            Errno::NoSuchGroup => "no such group",
            Errno::NotMember => "not a member of that group",
            Errno::TooLarge => "too large",
            Errno::Unavailable => "server unavailable, retry later",
            Errno::Forbidden => "forbidden: id is not the logged-in user",
            Errno::MailboxFull => "recipient's offline mailbox is full",
            Errno::TooManyAttempts => "too many attempts, retry later",
        }
    }
}
