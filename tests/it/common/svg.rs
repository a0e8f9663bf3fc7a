//! Reading lintrace-query's SVG figures back in tests: the figure's size,
//! the heatmap cells that carry a value, the data lines of a line plot.
//! Shared by tests/it/sweeps/sweep.rs (through `common`) and tests/query/figures.rs
//! (by path: it is another package's test).
#![allow(dead_code)]

/// Width and height of the (first) SVG element in `text`.
pub fn svg_size(text: &str) -> (u32, u32) {
    let tag = text[text.find("<svg").expect("an <svg>")..].split('>').next().unwrap();
    let attr = |name: &str| -> u32 {
        let at = tag.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("no {name} in {tag}")) + name.len() + 3;
        tag[at..].split('"').next().unwrap().parse().unwrap()
    };
    (attr("width"), attr("height"))
}

/// The heatmap cells with a value in an SVG: filled rectangles left of
/// `bar_x` (where the colour bar starts), neither white (background) nor
/// light grey (#E1E1E1, a cell without a value), as (x, fill).
pub fn heatmap_cells(svg: &str, bar_x: u32) -> Vec<(u32, String)> {
    svg.split("<rect ")
        .skip(1)
        .filter_map(|r| {
            let tag = r.split('>').next().unwrap();
            let get = |name: &str| tag.split(&format!("{name}=\"")).nth(1).map(|v| v.split('"').next().unwrap().to_string());
            let (x, fill) = (get("x")?.parse::<u32>().ok()?, get("fill")?);
            (x < bar_x && fill != "#FFFFFF" && fill != "#E1E1E1").then_some((x, fill))
        })
        .collect()
}

/// The data lines of a line plot's SVG (width 2, more than the legend's two
/// points), as their numbers of points.
pub fn data_lines(svg: &str) -> Vec<usize> {
    svg.split("<polyline ")
        .skip(1)
        .map(|p| p.split('>').next().unwrap())
        .filter(|tag| tag.contains("stroke-width=\"2\""))
        .map(|tag| tag.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split_whitespace().count())
        .filter(|&n| n > 2)
        .collect()
}
