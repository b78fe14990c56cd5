//! A dependency-free PNG bar chart of the load test's table (`load-chart`): an indexed-colour
//! canvas, a 5x7 bitmap font, and a PNG encoder (zlib with fixed-Huffman deflate and run /
//! previous-row matches, which suits flat chart images). No font files, no image crates.

use std::fmt;

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

/// The palette: white, black, grey, light grey, blue (HTTP/1.1), orange (h2c).
const PALETTE: [[u8; 3]; 6] = [
    [255, 255, 255],
    [20, 20, 20],
    [120, 120, 120],
    [225, 225, 225],
    [52, 101, 164],
    [230, 126, 34],
];
const WHITE: u8 = 0;
const BLACK: u8 = 1;
const GREY: u8 = 2;
const LIGHT: u8 = 3;
const BLUE: u8 = 4;
const ORANGE: u8 = 5;

/// An indexed-colour image.
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl fmt::Debug for Canvas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Canvas({}x{})", self.width, self.height)
    }
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![WHITE; width * height],
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, colour: u8) {
        for row in y.min(self.height)..(y + h).min(self.height) {
            let start = row * self.width + x.min(self.width);
            let end = row * self.width + (x + w).min(self.width);
            self.pixels[start..end].fill(colour);
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel `scale` pixels wide.
    fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, colour: u8) {
        for (i, c) in text.chars().enumerate() {
            let glyph = glyph(c);
            let gx = x + i * 6 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.rect(gx + col * scale, y + row * scale, scale, scale, colour);
                    }
                }
            }
        }
    }

    /// The PNG file.
    pub fn png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.width + 1) * self.height);
        for row in self.pixels.chunks(self.width) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.width as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.height as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 3, 0, 0, 0]); // 8-bit indexed, deflate, no interlace
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"PLTE", PALETTE.as_flattened());
        chunk(&mut out, b"IDAT", &zlib(&raw, self.width + 1));
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

/// Draws the load table: req/s and CPU-ms per 1,000 requests per target, HTTP/1.1 and h2c.
pub fn draw(rows: &[Row], title: &str) -> Canvas {
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
    let (label_w, panel_w, gap, top, row_h) = (300, 400, 40, 90, 46);
    let width = label_w + 2 * panel_w + 2 * gap;
    let height = top + targets.len() * row_h + 50;
    let mut c = Canvas::new(width, height);
    c.text(10, 10, title, 2, BLACK);
    c.rect(10, 40, 14, 14, BLUE);
    c.text(30, 44, "HTTP/1.1 (WRK)", 1, BLACK);
    c.rect(140, 40, 14, 14, ORANGE);
    c.text(160, 44, "H2C (H2LOAD -M10)", 1, BLACK);
    let panels = [
        ("REQUESTS/S (HIGHER IS BETTER)", false, label_w),
        (
            "PROXY CPU-MS PER 1K REQUESTS (LOWER IS BETTER)",
            true,
            label_w + panel_w + gap,
        ),
    ];
    for (name, cpu, x0) in panels {
        c.text(x0, 66, name, 1, BLACK);
        let max = targets
            .iter()
            .flat_map(|t| [value(t, false, cpu), value(t, true, cpu)])
            .flatten()
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let bar_max = (panel_w - 70) as f64;
        c.rect(x0, top - 6, 1, targets.len() * row_h, GREY);
        for (i, t) in targets.iter().enumerate() {
            let y = top + i * row_h;
            if i % 2 == 1 {
                c.rect(x0 + 1, y - 4, panel_w - 10, row_h, LIGHT);
            }
            for (k, (h2, colour)) in [(false, BLUE), (true, ORANGE)].into_iter().enumerate() {
                let by = y + k * 19;
                match value(t, h2, cpu) {
                    Some(v) => {
                        let len = ((v / max) * bar_max).round().max(1.0) as usize;
                        c.rect(x0 + 1, by, len, 15, colour);
                        let text = if cpu {
                            format!("{v:.1}")
                        } else {
                            format!("{:.1}K", v / 1000.0)
                        };
                        c.text(x0 + len + 6, by + 4, &text, 1, BLACK);
                    }
                    None => c.text(x0 + 6, by + 4, "-", 1, GREY),
                }
            }
        }
    }
    for (i, t) in targets.iter().enumerate() {
        let y = top + i * row_h + 12;
        let label: String = t.chars().take(24).collect();
        c.text(10, y, &label, 2, BLACK);
    }
    c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (ISO-HDLC), as PNG chunks carry.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Adler-32, the zlib trailer.
pub fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// Writes bits least significant first, as deflate packs them.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, whose bits go most significant first.
    fn code(&mut self, code: u32, bits: u32) {
        let reversed = code.reverse_bits() >> (32 - bits);
        self.put(reversed, bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

fn literal(bits: &mut Bits, symbol: u32) {
    match symbol {
        0..=143 => bits.code(0x30 + symbol, 8),
        144..=255 => bits.code(0x190 + symbol - 144, 9),
        256..=279 => bits.code(symbol - 256, 7),
        _ => bits.code(0xC0 + symbol - 280, 8),
    }
}

const LENGTH_BASE: [u32; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u32; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u32; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

fn matched(bits: &mut Bits, length: u32, distance: u32) {
    let i = LENGTH_BASE.iter().rposition(|&b| b <= length).unwrap_or(0);
    literal(bits, 257 + i as u32);
    bits.put(length - LENGTH_BASE[i], LENGTH_EXTRA[i]);
    let d = DIST_BASE.iter().rposition(|&b| b <= distance).unwrap_or(0);
    bits.code(d as u32, 5);
    bits.put(distance - DIST_BASE[d], DIST_EXTRA[d]);
}

/// zlib stream of `data`: one fixed-Huffman deflate block, with matches at distance 1 (runs)
/// and `stride` (the row above) only.
pub fn zlib(data: &[u8], stride: usize) -> Vec<u8> {
    let mut bits = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // final block
    bits.put(1, 2); // fixed Huffman codes
    let run = |i: usize, distance: usize| {
        if distance == 0 || i < distance || distance > 32_768 {
            return 0;
        }
        data[i..]
            .iter()
            .zip(&data[i - distance..])
            .take(258)
            .take_while(|(a, b)| a == b)
            .count()
    };
    let mut i = 0;
    while i < data.len() {
        let (near, above) = (run(i, 1), run(i, stride));
        let (length, distance) = if above > near {
            (above, stride)
        } else {
            (near, 1)
        };
        if length >= 3 {
            matched(&mut bits, length as u32, distance as u32);
            i += length;
        } else {
            literal(&mut bits, u32::from(data[i]));
            i += 1;
        }
    }
    literal(&mut bits, 256);
    let mut out = bits.finish();
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// The 5x7 glyph of `c` (rows top to bottom, 5 bits each; lower case drawn as upper case).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '>' => [8, 4, 2, 1, 2, 4, 8],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        ' ' => [0; 7],
        _ => [31, 17, 17, 17, 17, 17, 31],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_the_known_values() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn the_table_parses_and_draws_into_a_png() {
        let table = "| target | protocol | req/s | p50 | p99 | p99.9 | added | cpu | rss |\n\
                     |---|---|---|---|---|---|---|---|---|\n\
                     | direct | HTTP/1.1 | 89155.10 | 0.5ms | - | - | - | - | - |\n\
                     | mesh-proxy | HTTP/1.1 | 40000.5 | 1ms | - | - | +1ms | 20.50 | 9.1 |\n\
                     | mesh-proxy | h2c (mean) | 30000 | 1ms | - | - | +1ms | 25.00 | 9.1 |\n";
        let rows = parse_table(table).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].cpu_ms, Some(20.5));
        assert_eq!(rows[0].cpu_ms, None);
        let png = draw(&rows, "LOAD").png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        assert!(matches!(
            parse_table("| a | b | x | 1 | 1 | 1 | 1 | 1 | 1 |"),
            Err(ChartError::BadRate { line: 1, .. })
        ));
        assert!(matches!(parse_table("nothing"), Err(ChartError::Empty)));
    }
}
