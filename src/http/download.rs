//! Downloads (exports): CSV in RFC 4180 (comma, CRLF, quotes only where needed, a header row),
//! with every cell a spreadsheet would read as a formula neutralised by a leading `'`; and the
//! `Content-Disposition: attachment` response every export is sent as.

use std::borrow::Cow;

use actix_web::http::header;
use actix_web::HttpResponse;

use crate::error::ApiError;

/// The `format` query parameter of every download: `json` (the default) or `csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        match raw {
            None | Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some(_) => Err(ApiError::bad_request(
                "invalid_format",
                "format must be json or csv",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets
/// (tab and carriage return too, since some strip them first).
const FORMULA_STARTS: &[char] = &['=', '+', '-', '@', '\t', '\r'];

pub fn neutralise(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(FORMULA_STARTS) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// The CSV document for `header` and `rows`, every cell neutralised.
pub fn document<I, R>(header: &[&str], rows: I) -> Result<Vec<u8>, csv::Error>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = String>,
{
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(header)?;
    for row in rows {
        let cells: Vec<String> = row
            .into_iter()
            .map(|c| neutralise(&c).into_owned())
            .collect();
        w.write_record(&cells)?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// A download: `Content-Disposition: attachment`, never cached.
pub fn attachment(content_type: &str, filename: &str, body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_others_kept() {
        for bad in ["=1+1", "+1", "-2+3", "@SUM(A1)", "\t=x"] {
            assert!(neutralise(bad).starts_with('\''), "{bad:?}");
        }
        assert_eq!(neutralise("prod key"), "prod key");
        assert_eq!(neutralise("sk-…Ab12"), "sk-…Ab12");
    }

    #[test]
    fn documents_are_rfc4180() {
        let doc = document(
            &["a", "b"],
            vec![vec!["x,y".to_owned(), "say \"hi\"".to_owned()]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(doc).unwrap(),
            "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n"
        );
    }
}
