//! Issue 24, item 12: the console's HTML is written as `maud` templates, which escape every
//! interpolated value, so escaping is not a thing to remember. This test keeps it so: no
//! Rust string in the console's sources holds markup, but for the one audited renderer of
//! outside text (`Shown`, which marks invisible controls), and nothing is `PreEscaped`.

use std::path::Path;

#[test]
fn the_console_builds_no_markup_from_strings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("src/console") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("source");
        checked += 1;
        let mut in_shown = false;
        for (n, line) in source.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.starts_with("impl Render for Shown") {
                in_shown = true;
            } else if in_shown && line.starts_with('}') {
                in_shown = false;
            }
            assert!(
                !code.contains("PreEscaped"),
                "{}:{}: PreEscaped bypasses the templates' escaping",
                path.display(),
                n + 1
            );
            // A string literal that opens or closes an element.
            let markup = code.split('"').skip(1).step_by(2).any(|literal| {
                let bytes = literal.as_bytes();
                bytes
                    .windows(2)
                    .any(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || w[1] == b'/'))
            });
            assert!(
                in_shown || !markup,
                "{}:{}: markup built from a string; write it in an html! template:\n{line}",
                path.display(),
                n + 1
            );
        }
    }
    assert!(checked >= 2, "the console's sources were found");
}
