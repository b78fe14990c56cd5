//! The load test's table as a bar chart (`load-chart`): requests per second and proxy CPU per
//! 1,000 requests for each target, HTTP/1.1 and h2c side by side, drawn with plotters' SVG
//! backend (no font or image dependencies; the load script turns it into a PNG with
//! `rsvg-convert`).

use plotters::prelude::*;

/// One row of the load table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The target (`bare-hyper-proxy`, `mesh-proxy`, ...).
    pub target: String,
    /// `HTTP/1.1` or `h2c (mean)`.
    pub protocol: String,
    /// Requests per second.
    pub rps: f64,
    /// Proxy CPU-ms per 1,000 requests, when measured.
    pub cpu_ms: Option<f64>,
}

/// Why the table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// A row's `req/s` column is not a number.
    #[error("row {line}: req/s {value:?} is not a number")]
    BadRate {
        /// The 1-based line.
        line: usize,
        /// The column's text.
        value: String,
    },
    /// No data rows.
    #[error("the table has no rows")]
    Empty,
    /// plotters could not draw.
    #[error("drawing: {0}")]
    Draw(String),
}

/// Reads the markdown table `run.sh` writes (`| target | protocol | req/s | ... | CPU | RSS |`).
pub fn parse_table(text: &str) -> Result<Vec<Row>, ChartError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if !line.trim_start().starts_with('|') || cells.len() < 9 {
            continue;
        }
        if cells[0] == "target" || cells[0].starts_with("---") {
            continue;
        }
        let rps = cells[2]
            .replace(',', "")
            .parse::<f64>()
            .map_err(|_| ChartError::BadRate {
                line: i + 1,
                value: cells[2].to_owned(),
            })?;
        rows.push(Row {
            target: cells[0].to_owned(),
            protocol: cells[1].to_owned(),
            rps,
            cpu_ms: cells[7].parse().ok(),
        });
    }
    if rows.is_empty() {
        return Err(ChartError::Empty);
    }
    Ok(rows)
}

/// HTTP/1.1 bars.
const BLUE: RGBColor = RGBColor(52, 101, 164);
/// h2c bars.
const ORANGE: RGBColor = RGBColor(230, 126, 34);
/// Every other row's band.
const BAND: RGBColor = RGBColor(238, 238, 238);

/// Draws the load table as an SVG document: req/s and CPU-ms per 1,000 requests per target,
/// HTTP/1.1 and h2c.
pub fn draw_svg(rows: &[Row], title: &str) -> Result<String, ChartError> {
    let mut targets: Vec<&str> = Vec::new();
    for r in rows {
        if !targets.contains(&r.target.as_str()) {
            targets.push(&r.target);
        }
    }
    let value = |target: &str, h2: bool, cpu: bool| {
        rows.iter()
            .find(|r| r.target == target && r.protocol.starts_with("h2") == h2)
            .and_then(|r| if cpu { r.cpu_ms } else { Some(r.rps) })
    };
    let (label_w, panel_w, gap, top, row_h) = (230i32, 400i32, 40i32, 90i32, 46i32);
    let width = label_w + 2 * panel_w + 2 * gap;
    let height = top + targets.len() as i32 * row_h + 30;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        let draw =
            |e: Result<(), DrawingAreaErrorKind<_>>| e.map_err(|e| ChartError::Draw(e.to_string()));
        let font = |size: i32| ("sans-serif", size).into_font();
        draw(root.fill(&WHITE))?;
        draw(root.draw(&Text::new(title.to_owned(), (10, 10), font(20))))?;
        for (x, colour, name) in [
            (10, BLUE, "HTTP/1.1 (wrk)"),
            (160, ORANGE, "h2c (h2load -m10)"),
        ] {
            draw(root.draw(&Rectangle::new([(x, 42), (x + 14, 56)], colour.filled())))?;
            draw(root.draw(&Text::new(name, (x + 20, 42), font(14))))?;
        }
        let panels = [
            ("requests/s (higher is better)", false, label_w),
            (
                "proxy CPU-ms per 1k requests (lower is better)",
                true,
                label_w + panel_w + gap,
            ),
        ];
        for (name, cpu, x0) in panels {
            draw(root.draw(&Text::new(name, (x0, 66), font(14))))?;
            let max = targets
                .iter()
                .flat_map(|t| [value(t, false, cpu), value(t, true, cpu)])
                .flatten()
                .fold(0.0f64, f64::max)
                .max(1e-9);
            let bar_max = f64::from(panel_w - 80);
            for (i, t) in targets.iter().enumerate() {
                let y = top + i as i32 * row_h;
                if i % 2 == 1 {
                    draw(root.draw(&Rectangle::new(
                        [(x0, y - 4), (x0 + panel_w - 10, y - 4 + row_h)],
                        BAND.filled(),
                    )))?;
                }
                for (k, (h2, colour)) in [(false, BLUE), (true, ORANGE)].into_iter().enumerate() {
                    let by = y + k as i32 * 19;
                    match value(t, h2, cpu) {
                        Some(v) => {
                            let len = ((v / max) * bar_max).round().max(1.0) as i32;
                            draw(root.draw(&Rectangle::new(
                                [(x0 + 1, by), (x0 + 1 + len, by + 15)],
                                colour.filled(),
                            )))?;
                            let text = if cpu {
                                format!("{v:.1}")
                            } else {
                                format!("{:.1}k", v / 1000.0)
                            };
                            draw(root.draw(&Text::new(text, (x0 + len + 6, by + 1), font(12))))?;
                        }
                        None => draw(root.draw(&Text::new("-", (x0 + 6, by + 1), font(12))))?,
                    }
                }
            }
            draw(root.draw(&PathElement::new(
                [(x0, top - 6), (x0, top - 6 + targets.len() as i32 * row_h)],
                BLACK.stroke_width(1),
            )))?;
        }
        for (i, t) in targets.iter().enumerate() {
            let y = top + i as i32 * row_h + 10;
            draw(root.draw(&Text::new(t.to_string(), (10, y), font(15))))?;
        }
        draw(root.present())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_draws_into_an_svg() {
        let table = "| target | protocol | req/s | p50 | p99 | p99.9 | added | cpu | rss |\n\
                     |---|---|---|---|---|---|---|---|---|\n\
                     | direct | HTTP/1.1 | 89155.10 | 0.5ms | - | - | - | - | - |\n\
                     | mesh-proxy | HTTP/1.1 | 40000.5 | 1ms | - | - | +1ms | 20.50 | 9.1 |\n\
                     | mesh-proxy | h2c (mean) | 30000 | 1ms | - | - | +1ms | 25.00 | 9.1 |\n";
        let rows = parse_table(table).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].cpu_ms, Some(20.5));
        assert_eq!(rows[0].cpu_ms, None);
        let svg = draw_svg(&rows, "load").unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "mesh-proxy",
            "direct",
            "89.2k",
            "40.0k",
            "30.0k",
            "20.5",
            "25.0",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(matches!(
            parse_table("| a | b | x | 1 | 1 | 1 | 1 | 1 | 1 |"),
            Err(ChartError::BadRate { line: 1, .. })
        ));
        assert!(matches!(parse_table("nothing"), Err(ChartError::Empty)));
    }
}
