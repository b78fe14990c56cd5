//! Draws the load test's table as an SVG bar chart: `load-chart RESULTS.md OUT.svg [TITLE]`
//! (the load script converts it to PNG with `rsvg-convert`).

use mesh_benches::chart;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(output)) = (args.first(), args.get(1)) else {
        eprintln!("usage: load-chart RESULTS.md OUT.svg [TITLE]");
        return ExitCode::FAILURE;
    };
    let title = args.get(2).map_or("mesh load test", String::as_str);
    let text = match std::fs::read_to_string(input) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("cannot read {input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = match chart::parse_table(&text) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("{input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let svg = match chart::draw_svg(&rows, title) {
        Ok(svg) => svg,
        Err(e) => {
            eprintln!("{input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(output, svg) {
        eprintln!("cannot write {output}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
