//! The command line as a user meets it: one binary with every subcommand and
//! clap's own help for each, shell completions and a man page.

use crate::common::*;

#[test]
fn one_binary_has_every_subcommand_with_its_own_help() {
    let d = tempfile::tempdir().unwrap();
    let help = String::from_utf8(ok(imgd(d.path()).arg("--help")).stdout).unwrap();
    for sub in ["build", "test", "run", "serve", "ls", "verify", "gc", "completions", "man"] {
        assert!(help.contains(&format!("  {sub} ")), "{sub} missing from:\n{help}");
    }
    #[cfg(feature = "aws")]
    for (sub, flag) in [("sync", "--bucket"), ("prune", "--cache-keep")] {
        assert!(help.contains(&format!("  {sub} ")), "{sub} missing from:\n{help}");
        let h = String::from_utf8(ok(imgd(d.path()).args([sub, "--help"])).stdout).unwrap();
        assert!(h.contains("Usage: imgd ") && h.contains(flag), "{sub} --help:\n{h}");
    }
}

#[test]
fn completions_and_man_page_cover_the_subcommands() {
    let d = tempfile::tempdir().unwrap();
    let bash = String::from_utf8(ok(imgd(d.path()).args(["completions", "bash"])).stdout).unwrap();
    assert!(
        bash.contains("complete -F _imgd") && bash.contains("imgd__subcmd__serve"),
        "{}",
        &bash[..bash.len().min(400)]
    );
    let zsh = String::from_utf8(ok(imgd(d.path()).args(["completions", "zsh"])).stdout).unwrap();
    assert!(zsh.starts_with("#compdef imgd"), "{}", &zsh[..zsh.len().min(200)]);
    let man = String::from_utf8(ok(imgd(d.path()).arg("man")).stdout).unwrap();
    assert!(man.contains(".TH imgd") && man.contains("serve"), "{}", &man[..man.len().min(400)]);
}
