//! Message templates (minijinja): one per channel and kind of message, with defaults that
//! read well in a terminal (console) and on a phone (Telegram, HTML). A channel's
//! `templates:` override them one by one. Telegram templates escape every value for
//! HTML (`<`, `>`, `&`); the template's own tags stay.

use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment};

use super::policy::Ctx;

/// What one rendering may spend (minijinja's instructions).
pub const FUEL: u64 = 500_000;
/// The longest message kept: far more than a phone shows (Telegram splits at 4096).
pub const MAX_RENDERED: usize = 64 << 10;

/// The kinds of message, each a template.
pub const KINDS: &[&str] = &[
    "failed",
    "recovered",
    "grouped",
    "digest",
    "reminder",
    "flapping",
    "script_error",
    "cluster",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Plain text: the console, and the `text` of a webhook's document.
    Text,
    /// Telegram's HTML.
    Html,
}

const TEXT: &[(&str, &str)] = &[
    ("failed", "ALERT FAILED {{ check }} on {{ host }}: {{ message }} ({{ failures }} consecutive failures){% if comment %} | {{ comment }}{% endif %}{% if suppressed %} | suppressed meanwhile: {{ suppressed|join(', ') }}{% endif %}{% if transcript %} | {{ transcript }}{% endif %}"),
    ("recovered", "ALERT RECOVERED {{ check }} on {{ host }} after {{ duration }} down: {{ message }}{% if acked_by %} | acknowledged by {{ acked_by }} at {{ acked_at }}{% endif %}{% if comment %} | {{ comment }}{% endif %}{% if suppressed %} | suppressed while it was down: {{ suppressed|join(', ') }}{% endif %}{% if transcript %} | {{ transcript }}{% endif %}"),
    ("grouped", "{% if group %}ALERT {{ status|upper }} {{ count }} of {{ group }} on {{ host }}: {{ names|join(', ') }}{% if comment %} | {{ comment }}{% endif %}{% else %}ALERT {{ count }} changes on {{ host }}: {% for e in events %}{{ e.check }} {{ e.status }} ({{ e.message }}{% if e.acked_by %}; acknowledged by {{ e.acked_by }}{% endif %}){% if not loop.last %}; {% endif %}{% endfor %}{% if comment %} | {{ comment }}{% endif %}{% endif %}"),
    ("digest", "DIGEST on {{ host }}, held while the send window was closed: {{ summary|join('; ') }}"),
    ("reminder", "REMINDER {{ check }} on {{ host }} still failing after {{ duration }} (reminder {{ reminders }}): {{ message }}{% if comment %} | {{ comment }}{% endif %}"),
    ("flapping", "{% if status == 'flapping' %}FLAPPING {{ check }} on {{ host }}: {{ changes }} changes within {{ within }}; its alerts are held until it is stable for {{ stable_for }}{% else %}FLAPPING OVER {{ check }} on {{ host }}: stable for {{ stable_for }}, now {{ status }}: {{ message }}{% endif %}"),
    ("script_error", "ALERT SCRIPT ERROR on {{ host }}: {{ error }} ({{ message }})"),
    ("cluster", "{% if status == 'unreachable' %}ALERT CLUSTER UNREACHABLE on {{ host }} (replica {{ check }}): NATS cannot be reached for {{ duration }} ({{ error }}); {{ message }}{% else %}CLUSTER REACHABLE AGAIN on {{ host }} (replica {{ check }}) after {{ duration }}: {{ message }}{% endif %}"),
];

const HTML: &[(&str, &str)] = &[
    ("failed", "🔴 <b>{{ check }}</b> failed on {{ host }}\n{{ message }}{% if comment %}\n\n<i>{{ comment }}</i>{% endif %}\n\n{{ failures }}/{{ threshold }} failures · {{ clock }}{% if suppressed %}\nSuppressed meanwhile: {{ suppressed|join(', ') }}{% endif %}{% if transcript %}\n\n<pre>{{ transcript }}</pre>{% endif %}"),
    ("recovered", "✅ <b>{{ check }}</b> recovered on {{ host }} after {{ duration }}\n{{ message }}{% if acked_by %}\nAcknowledged by {{ acked_by }} at {{ acked_at }}{% endif %}{% if suppressed %}\nSuppressed while it was down: {{ suppressed|join(', ') }}{% endif %}{% if transcript %}\n\n<pre>{{ transcript }}</pre>{% endif %}"),
    ("grouped", "{% if group %}{% if status == 'failed' %}🔴{% else %}✅{% endif %} <b>{{ count }} of {{ group }}</b> {{ status }} on {{ host }}\n{{ names|join(', ') }}{% if comment %}\n\n<i>{{ comment }}</i>{% endif %}{% else %}<b>{{ count }} changes</b> on {{ host }}{% for e in events %}\n{% if e.status == 'failed' %}🔴{% elif e.status == 'recovered' %}✅{% else %}•{% endif %} <b>{{ e.check }}</b> {{ e.status }}: {{ e.message }}{% if e.acked_by %} (acknowledged by {{ e.acked_by }}){% endif %}{% endfor %}{% if comment %}\n\n<i>{{ comment }}</i>{% endif %}{% endif %}"),
    ("digest", "🕗 <b>While the send window was closed</b> on {{ host }}:{% for s in summary %}\n• {{ s }}{% endfor %}"),
    ("reminder", "⏰ <b>{{ check }}</b> still failing on {{ host }} after {{ duration }} (reminder {{ reminders }})\n{{ message }}{% if comment %}\n\n<i>{{ comment }}</i>{% endif %}"),
    ("flapping", "{% if status == 'flapping' %}〰️ <b>{{ check }}</b> is flapping on {{ host }}: {{ changes }} changes within {{ within }}. Alerts are held until it is stable for {{ stable_for }}.{% else %}〰️ <b>{{ check }}</b> stopped flapping on {{ host }}: now {{ status }}\n{{ message }}{% endif %}"),
    ("script_error", "⚠️ <b>Script error</b> on {{ host }}\n<code>{{ error }}</code>\n{{ message }}"),
    ("cluster", "{% if status == 'unreachable' %}🔌 <b>Cluster unreachable</b> from {{ host }} (replica {{ check }}) for {{ duration }}\n<code>{{ error }}</code>\n{{ message }}{% else %}🔌 <b>Cluster reachable again</b> from {{ host }} (replica {{ check }}) after {{ duration }}\n{{ message }}{% endif %}"),
];

/// The templates of every channel, compiled.
pub struct Templates {
    env: Environment<'static>,
}

fn name(channel: &str, kind: &str, flavor: Flavor) -> String {
    match flavor {
        Flavor::Html => format!("{channel}/{kind}.html"),
        Flavor::Text => format!("{channel}/{kind}.txt"),
    }
}

/// A template that does not compile: the channel, the kind, and minijinja's reason
/// with the line inside the template.
#[derive(Debug)]
pub struct TemplateError {
    pub channel: String,
    pub kind: String,
    pub message: String,
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        // A template is a few lines; one that loops for ever (or a million times) runs
        // out of fuel within milliseconds and the default text is sent instead.
        env.set_fuel(Some(FUEL));
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Custom("telegram")
            } else {
                AutoEscape::None
            }
        });
        // Telegram's HTML knows &lt; &gt; &amp; (and &quot;): escape just those, so that
        // a URL stays readable (minijinja's HTML escaping also turns `/` into &#x2f;).
        env.set_formatter(|out, state, value| {
            if state.auto_escape() == AutoEscape::Custom("telegram") && !value.is_safe() {
                if value.is_undefined() || value.is_none() {
                    return Ok(());
                }
                let text = value.to_string();
                let escaped = text
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;");
                out.write_str(&escaped).map_err(|_| {
                    minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write failed")
                })
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env.set_keep_trailing_newline(false);
        Templates { env }
    }

    /// Adds a channel: the defaults of its flavor, and its overrides. A webhook also
    /// gets the text templates (for the `text` of its document).
    pub fn add_channel(
        &mut self,
        channel: &str,
        flavor: Flavor,
        overrides: &BTreeMap<String, String>,
    ) -> Result<(), Vec<TemplateError>> {
        let defaults = match flavor {
            Flavor::Text => TEXT,
            Flavor::Html => HTML,
        };
        let mut errors = Vec::new();
        for (kind, source) in defaults {
            let source = overrides
                .get(*kind)
                .cloned()
                .unwrap_or_else(|| source.to_string());
            if let Err(e) = self
                .env
                .add_template_owned(name(channel, kind, flavor), source)
            {
                let line = e.line().map(|l| format!("line {l}: ")).unwrap_or_default();
                errors.push(TemplateError {
                    channel: channel.to_string(),
                    kind: kind.to_string(),
                    message: format!(
                        "the template does not compile: {line}{}",
                        e.detail().unwrap_or(&e.to_string())
                    ),
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Renders a message. A template that fails at render time (a filter on a missing
    /// value, say) falls back to the default text, so an alert is never lost to a typo.
    pub fn render(&self, channel: &str, kind: &str, flavor: Flavor, ctx: &Ctx) -> String {
        self.render_checked(channel, kind, flavor, ctx).0
    }

    /// [`render`](Self::render), and the template's error when the default text was
    /// used instead (for the caller to log).
    pub fn render_checked(
        &self,
        channel: &str,
        kind: &str,
        flavor: Flavor,
        ctx: &Ctx,
    ) -> (String, Option<String>) {
        let rendered = self
            .env
            .get_template(&name(channel, kind, flavor))
            .and_then(|t| t.render(ctx));
        match rendered {
            Ok(s) if s.len() > MAX_RENDERED => {
                let mut cut = MAX_RENDERED;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                (
                    format!("{}…", &s[..cut]),
                    Some(format!("the message was cut at {} KiB", MAX_RENDERED >> 10)),
                )
            }
            Ok(s) => (s, None),
            Err(e) => {
                let default = TEXT
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, s)| *s)
                    .unwrap_or("{{ message }}");
                let env = Environment::new();
                let text = env
                    .render_str(default, ctx)
                    .unwrap_or_else(|_| ctx.message.clone());
                (text, Some(e.to_string()))
            }
        }
    }
}

impl Default for Templates {
    fn default() -> Self {
        Templates::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            kind: "failed".into(),
            host: "shop-01".into(),
            check: "web".into(),
            status: "failed".into(),
            message: "HTTP 500 from http://x/health <b>&amp;</b>".into(),
            comment: "Call the <web> team & wait".into(),
            failures: 3,
            threshold: 3,
            clock: "02:10".into(),
            duration: "3m12s".into(),
            ..Ctx::default()
        }
    }

    #[test]
    fn a_template_that_loops_runs_out_of_fuel_and_the_default_is_sent() {
        let mut t = Templates::new();
        let mut own = BTreeMap::new();
        own.insert(
            "failed".to_string(),
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"
                .to_string(),
        );
        t.add_channel("console", Flavor::Text, &own).unwrap();
        let (text, err) = t.render_checked("console", "failed", Flavor::Text, &ctx());
        assert!(text.starts_with("ALERT FAILED web on shop-01"), "{text}");
        assert!(err.unwrap().contains("fuel"));
    }

    #[test]
    fn console_lines() {
        let mut t = Templates::new();
        t.add_channel("console", Flavor::Text, &BTreeMap::new())
            .unwrap();
        assert_eq!(
            t.render("console", "failed", Flavor::Text, &ctx()),
            "ALERT FAILED web on shop-01: HTTP 500 from http://x/health <b>&amp;</b> (3 consecutive failures) | Call the <web> team & wait"
        );
        let mut c = ctx();
        c.group = "terminals".into();
        c.status = "failed".into();
        c.count = 3;
        c.names = vec!["10.1.2.3".into(), "10.1.2.4".into(), "10.1.2.9".into()];
        c.comment = String::new();
        assert_eq!(
            t.render("console", "grouped", Flavor::Text, &c),
            "ALERT FAILED 3 of terminals on shop-01: 10.1.2.3, 10.1.2.4, 10.1.2.9"
        );
    }

    #[test]
    fn html_escapes_values_but_keeps_its_own_tags() {
        let mut t = Templates::new();
        t.add_channel("ops", Flavor::Html, &BTreeMap::new())
            .unwrap();
        let s = t.render("ops", "failed", Flavor::Html, &ctx());
        assert!(s.starts_with("🔴 <b>web</b> failed on shop-01\n"), "{s}");
        assert!(
            s.contains("HTTP 500 from http://x/health &lt;b&gt;&amp;amp;&lt;/b&gt;"),
            "{s}"
        );
        assert!(
            s.contains("<i>Call the &lt;web&gt; team &amp; wait</i>"),
            "{s}"
        );
    }

    #[test]
    fn an_override_and_a_broken_one() {
        let mut t = Templates::new();
        let mut o = BTreeMap::new();
        o.insert(
            "failed".to_string(),
            "{{ check }} is down: {{ comment }}".to_string(),
        );
        t.add_channel("ops", Flavor::Text, &o).unwrap();
        assert_eq!(
            t.render("ops", "failed", Flavor::Text, &ctx()),
            "web is down: Call the <web> team & wait"
        );
        let mut bad = BTreeMap::new();
        bad.insert(
            "recovered".to_string(),
            "ok\n{% if check %}no end".to_string(),
        );
        let errs = t.add_channel("bad", Flavor::Text, &bad).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].kind, "recovered");
        assert!(
            errs[0]
                .message
                .starts_with("the template does not compile: line 2: "),
            "{}",
            errs[0].message
        );
    }
}
