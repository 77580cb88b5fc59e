//! Reads `cluster-config.xml` into a raw element tree with line numbers.
//!
//! This layer knows XML, not the meaning of any element: it rejects what is not well-formed
//! and any text content, and leaves names, attributes and values to `validate`.

use quick_xml::Reader;
use quick_xml::errors::IllFormedError;
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesStart, Event};

use super::{ConfigError, one_line, quote};

/// Nesting deeper than this is never valid (the format uses three levels) and is refused
/// while reading, so a hostile file cannot build a tree deep enough to overflow the stack.
const MAX_DEPTH: usize = 16;

/// One element as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawElement {
    /// Tag name as written, e.g. `gossip`.
    pub name: String,
    /// 1-based line of the `<` that opens the element.
    pub line: usize,
    /// Attributes in document order, values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<RawElement>,
}

impl RawElement {
    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i)
            .collect();
        Self { newlines }
    }

    fn line_of(&self, offset: u64) -> usize {
        // An offset past `usize` cannot come from an in-memory string; clamp rather than panic.
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
}

/// Parses `text` into its single top-level element; `file` names the source in errors.
pub(super) fn parse_document(text: &str, file: &str) -> Result<RawElement, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::Empty {
            file: file.to_owned(),
        });
    }
    let lines = LineIndex::new(text);
    let malformed = |line: usize, message: String| ConfigError::Malformed {
        file: file.to_owned(),
        line,
        message: one_line(&message),
    };

    let mut reader = Reader::from_str(text);
    let mut open: Vec<RawElement> = Vec::new();
    let mut root: Option<RawElement> = None;

    loop {
        // Whitespace arrives as its own Text event (text is not trimmed), so the position
        // before a tag event is the offset of its `<`.
        let start = reader.buffer_position();
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(err) => {
                let mut message = xml_error_message(&err);
                // quick-xml names the element left open but not where it opened, which is the
                // line the mistake is on (the mismatched end tag is only where it shows).
                if let quick_xml::Error::IllFormed(IllFormedError::MismatchedEndTag {
                    expected,
                    found,
                }) = &err
                    && let Some(unclosed) = open.last()
                {
                    message = format!(
                        "<{expected}> opened at line {} is never closed (found </{found}> where </{expected}> was expected; write <{expected} .../> or add </{expected}>)",
                        unclosed.line
                    );
                }
                return Err(malformed(lines.line_of(reader.error_position()), message));
            }
        };
        match event {
            Event::Start(tag) | Event::Empty(tag) if open.len() >= MAX_DEPTH => {
                let name = String::from_utf8_lossy(tag.name().as_ref()).into_owned();
                return Err(malformed(
                    lines.line_of(start),
                    format!("<{name}> is nested more than {MAX_DEPTH} elements deep"),
                ));
            }
            Event::Start(tag) => {
                let element = read_element(&tag, start, &lines, file, &reader)?;
                check_single_root(&open, root.as_ref(), &element, file)?;
                open.push(element);
            }
            Event::Empty(tag) => {
                let element = read_element(&tag, start, &lines, file, &reader)?;
                check_single_root(&open, root.as_ref(), &element, file)?;
                attach(&mut open, &mut root, element);
            }
            Event::End(_) => {
                // quick-xml already checked that this end tag matches the innermost open one.
                if let Some(element) = open.pop() {
                    attach(&mut open, &mut root, element);
                }
            }
            Event::Text(text) => {
                reject_text(&text, start, &open, &lines, file)?;
            }
            Event::CData(data) => {
                reject_text(&data, start, &open, &lines, file)?;
            }
            Event::GeneralRef(reference) => {
                let shown = format!("&{};", String::from_utf8_lossy(&reference));
                return Err(text_error(&shown, lines.line_of(start), &open, file));
            }
            // Comments, the `<?xml ...?>` declaration, processing instructions and a DOCTYPE
            // carry no configuration; quick-xml never expands DOCTYPE entities, so it is inert.
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }

    // quick-xml reports a stray end tag but not a start tag left open at the end of input.
    if let Some(unclosed) = open.last() {
        return Err(malformed(
            lines.line_of(text.len() as u64),
            format!(
                "<{}> opened at line {} is never closed (expected </{}> before the end of the file)",
                unclosed.name, unclosed.line, unclosed.name
            ),
        ));
    }
    root.ok_or_else(|| ConfigError::File {
        file: file.to_owned(),
        message: "no <cluster> element found; the file holds only comments or declarations"
            .to_owned(),
    })
}

/// Adds a finished element to its parent, or makes it the root.
fn attach(open: &mut [RawElement], root: &mut Option<RawElement>, element: RawElement) {
    match open.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

/// A second top-level element is legal for quick-xml but not for an XML document.
fn check_single_root(
    open: &[RawElement],
    root: Option<&RawElement>,
    element: &RawElement,
    file: &str,
) -> Result<(), ConfigError> {
    match root {
        Some(first) if open.is_empty() => Err(ConfigError::Malformed {
            file: file.to_owned(),
            line: element.line,
            message: one_line(&format!(
                "<{}> after the end of <{}> (line {}); a file holds exactly one top-level element",
                element.name, first.name, first.line
            )),
        }),
        _ => Ok(()),
    }
}

/// Turns a start tag into a `RawElement`, unescaping attribute values.
fn read_element(
    tag: &BytesStart<'_>,
    start: u64,
    lines: &LineIndex,
    file: &str,
    reader: &Reader<&[u8]>,
) -> Result<RawElement, ConfigError> {
    let name = String::from_utf8_lossy(tag.name().as_ref()).into_owned();
    let line = lines.line_of(start);
    let mut attrs: Vec<(String, String)> = Vec::new();
    for attr in tag.attributes() {
        let attr = match attr {
            Ok(attr) => attr,
            Err(AttrError::Duplicated(at, _)) => {
                let key = attribute_name_at(tag, at);
                return Err(ConfigError::Invalid {
                    file: file.to_owned(),
                    line: lines.line_of(tag_offset(start, at)),
                    element: one_line(&format!("<{name}>")),
                    message: one_line(&format!("attribute {key} is given twice")),
                });
            }
            Err(err) => {
                let at = match err {
                    AttrError::ExpectedEq(at)
                    | AttrError::ExpectedValue(at)
                    | AttrError::UnquotedValue(at)
                    | AttrError::ExpectedQuote(at, _)
                    | AttrError::Duplicated(at, _) => at,
                };
                return Err(ConfigError::Malformed {
                    file: file.to_owned(),
                    line: lines.line_of(tag_offset(start, at)),
                    message: one_line(&format!("in <{name}>: {}", attr_error_message(&err))),
                });
            }
        };
        let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
        let value = attr
            .decode_and_unescape_value(reader.decoder())
            .map_err(|err| ConfigError::Malformed {
                file: file.to_owned(),
                line,
                message: one_line(&format!(
                    "in <{name}>: attribute {key}: {}",
                    xml_error_message(&err)
                )),
            })?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(RawElement {
        name,
        line,
        attrs,
        children: Vec::new(),
    })
}

/// Absolute offset of a position quick-xml reports relative to the tag content (after `<`).
fn tag_offset(start: u64, at: usize) -> u64 {
    start.saturating_add(1).saturating_add(at as u64)
}

/// The attribute name that starts at `at` inside the tag content, for duplicate reports.
fn attribute_name_at(tag: &BytesStart<'_>, at: usize) -> String {
    let content: &[u8] = tag;
    let rest = content.get(at..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|&b| b == b'=' || b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    one_line(&String::from_utf8_lossy(&rest[..end]))
}

/// Settings live in attributes; any non-whitespace text is a mistake worth pointing at.
fn reject_text(
    raw: &[u8],
    start: u64,
    open: &[RawElement],
    lines: &LineIndex,
    file: &str,
) -> Result<(), ConfigError> {
    match raw.iter().position(|b| !b.is_ascii_whitespace()) {
        None => Ok(()),
        Some(first) => {
            let shown = String::from_utf8_lossy(&raw[first..]);
            let line = lines.line_of(start.saturating_add(first as u64));
            Err(text_error(shown.trim_end(), line, open, file))
        }
    }
}

fn text_error(shown: &str, line: usize, open: &[RawElement], file: &str) -> ConfigError {
    match open.last() {
        Some(parent) => ConfigError::Invalid {
            file: file.to_owned(),
            line,
            element: one_line(&format!("<{}>", parent.name)),
            message: format!(
                "unexpected text {}; settings go in attributes, as in <gossip interval-ms=\"150\"/>",
                quote(shown)
            ),
        },
        None => ConfigError::Malformed {
            file: file.to_owned(),
            line,
            message: format!("text {} outside any element", quote(shown)),
        },
    }
}

/// quick-xml's messages, minus the positions it gives relative to a tag (we print lines).
fn xml_error_message(err: &quick_xml::Error) -> String {
    match err {
        quick_xml::Error::InvalidAttr(attr) => attr_error_message(attr).to_owned(),
        other => other.to_string(),
    }
}

fn attr_error_message(err: &AttrError) -> &'static str {
    match err {
        AttrError::ExpectedEq(_) => "an attribute name must be followed by =\"value\"",
        AttrError::ExpectedValue(_) => "= must be followed by a quoted value",
        AttrError::UnquotedValue(_) => "attribute values must be in quotes",
        AttrError::ExpectedQuote(_, _) => "an attribute value is missing its closing quote",
        AttrError::Duplicated(_, _) => "an attribute is given twice",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawElement, ConfigError> {
        parse_document(text, "t.xml")
    }

    fn message(text: &str) -> String {
        match parse(text) {
            Ok(root) => panic!("expected an error, got {root:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn builds_tree_with_lines_and_unescaped_values() {
        let text = "<?xml version=\"1.0\"?>\n<!-- hi -->\n<cluster id=\"a&amp;b\">\n  <nodes>\n    <node name='n'/>\n  </nodes>\n</cluster>\n";
        let root = parse(text).expect("valid");
        assert_eq!(root.name, "cluster");
        assert_eq!(root.line, 3);
        assert_eq!(root.attr("id"), Some("a&b"));
        let nodes = &root.children[0];
        assert_eq!((nodes.name.as_str(), nodes.line), ("nodes", 4));
        assert_eq!(nodes.children[0].line, 5);
        assert_eq!(nodes.children[0].attr("name"), Some("n"));
    }

    #[test]
    fn empty_and_whitespace_files_are_empty() {
        assert_eq!(
            message(""),
            "t.xml: the file is empty; expected a <cluster> element"
        );
        assert_eq!(
            message(" \n\t\n"),
            "t.xml: the file is empty; expected a <cluster> element"
        );
    }

    #[test]
    fn comments_only_has_no_cluster() {
        let msg = message("<?xml version=\"1.0\"?>\n<!-- nothing -->\n");
        assert!(msg.starts_with("t.xml: no <cluster> element"), "{msg}");
    }

    #[test]
    fn unclosed_start_tag_names_it_and_its_line() {
        let msg = message("<cluster id=\"a\">\n  <nodes>\n</cluster>\n");
        assert!(msg.starts_with("t.xml:3: malformed XML:"), "{msg}");
        let msg = message("<cluster id=\"a\">\n  <nodes>\n");
        assert!(msg.starts_with("t.xml:3: malformed XML:"), "{msg}");
        assert!(
            msg.contains("<nodes> opened at line 2 is never closed"),
            "{msg}"
        );
    }

    #[test]
    fn unterminated_tag_is_malformed() {
        let msg = message("<cluster id=\"a\">\n  <gossip interval-ms=\"1\"\n");
        assert!(msg.starts_with("t.xml:2: malformed XML:"), "{msg}");
    }

    #[test]
    fn duplicate_attribute_is_named() {
        let msg = message("<cluster id=\"a\"\n id=\"b\"/>");
        assert_eq!(msg, "t.xml:2: <cluster>: attribute id is given twice");
    }

    #[test]
    fn unquoted_attribute_is_malformed() {
        let msg = message("<cluster id=a/>");
        assert!(msg.contains("malformed XML: in <cluster>: "), "{msg}");
    }

    #[test]
    fn text_content_is_rejected_with_its_line() {
        let msg = message("<cluster id=\"a\">\n\n  hello\n</cluster>");
        assert_eq!(
            msg,
            "t.xml:3: <cluster>: unexpected text \"hello\"; settings go in attributes, as in <gossip interval-ms=\"150\"/>"
        );
        let msg = message("<cluster id=\"a\"><![CDATA[x]]></cluster>");
        assert!(msg.contains("unexpected text \"x\""), "{msg}");
        let msg = message("<cluster id=\"a\">&amp;</cluster>");
        assert!(msg.contains("unexpected text \"&amp;\""), "{msg}");
        let msg = message("junk <cluster id=\"a\"/>");
        assert!(
            msg.starts_with("t.xml:1: malformed XML: text \"junk"),
            "{msg}"
        );
    }

    #[test]
    fn second_top_level_element_is_rejected() {
        let msg = message("<cluster id=\"a\"/>\n<cluster id=\"b\"/>");
        assert!(
            msg.starts_with("t.xml:2: malformed XML: <cluster> after the end"),
            "{msg}"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "<a>".repeat(100_000);
        let msg = message(&text);
        assert!(msg.contains("nested more than"), "{msg}");
    }

    #[test]
    fn unknown_entity_is_malformed() {
        let msg = message("<cluster id=\"&nope;\"/>");
        assert!(
            msg.starts_with("t.xml:1: malformed XML: in <cluster>: attribute id"),
            "{msg}"
        );
    }

    #[test]
    fn unclosed_node_names_the_line_it_opened() {
        let text = "<cluster id=\"a\">\n  <nodes>\n    <node name=\"n\">\n    <node name=\"m\"/>\n  </nodes>\n</cluster>\n";
        let msg = message(text);
        assert!(msg.starts_with("t.xml:5: malformed XML:"), "{msg}");
        assert!(
            msg.contains("<node> opened at line 3 is never closed"),
            "{msg}"
        );
        assert!(msg.contains("</nodes>"), "{msg}");
    }

    #[test]
    fn mismatched_end_tag_is_malformed() {
        let msg = message("<cluster id=\"a\">\n<nodes></gossip>\n</cluster>");
        assert!(msg.starts_with("t.xml:2: malformed XML:"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
