//! Draws the load test's table as a PNG bar chart: `load-chart RESULTS.md OUT.png [TITLE]`.

use mesh_benches::chart;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(output)) = (args.first(), args.get(1)) else {
        eprintln!("usage: load-chart RESULTS.md OUT.png [TITLE]");
        return ExitCode::FAILURE;
    };
    let title = args.get(2).map_or("MESH LOAD TEST", String::as_str);
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
    if let Err(e) = std::fs::write(output, chart::draw(&rows, title).png()) {
        eprintln!("cannot write {output}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
