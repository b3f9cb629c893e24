//! Reading what `torch.save` writes, without Python: the zip archive (stored entries) and a
//! pickle virtual machine for the opcodes of protocols 2 to 5. Objects of classes the machine
//! does not know are kept as data (class, constructor arguments, state, items), so a caller can
//! read what it needs from them (tensors, numpy arrays, dicts) and ignore the rest.

use crate::error::{Error, Result};
use std::collections::HashMap;

fn bad(m: impl Into<String>) -> Error {
    Error::ModelFormat(m.into())
}

/// The entries of a zip archive of stored (uncompressed) entries, as torch.save writes them.
pub fn zip_entries(bytes: &[u8]) -> Result<HashMap<String, Vec<u8>>> {
    let u16_at = |o: usize| -> Result<usize> {
        bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize).ok_or_else(|| bad("truncated zip archive"))
    };
    let u32_at = |o: usize| -> Result<usize> {
        bytes.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or_else(|| bad("truncated zip archive"))
    };
    let u64_at = |o: usize| -> Result<usize> {
        bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize).ok_or_else(|| bad("truncated zip archive"))
    };
    // End of central directory: the last "PK\x05\x06" record.
    let eocd = (0..bytes.len().saturating_sub(21)).rev().find(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x05, 0x06]).ok_or_else(|| bad("not a zip archive (no end record)"))?;
    let mut n_entries = u16_at(eocd + 10)?;
    let mut dir = u32_at(eocd + 16)?;
    if dir == 0xffff_ffff || n_entries == 0xffff {
        // ZIP64: the locator precedes the end record.
        let loc = eocd.checked_sub(20).ok_or_else(|| bad("truncated zip64 archive"))?;
        let rec = u64_at(loc + 8)?;
        n_entries = u64_at(rec + 32)?;
        dir = u64_at(rec + 48)?;
    }
    let mut out = HashMap::new();
    let mut p = dir;
    for _ in 0..n_entries {
        if u32_at(p)? != 0x0201_4b50 {
            return Err(bad("corrupt zip central directory"));
        }
        let method = u16_at(p + 10)?;
        let mut csize = u32_at(p + 20)?;
        let name_len = u16_at(p + 28)?;
        let extra_len = u16_at(p + 30)?;
        let comment_len = u16_at(p + 32)?;
        let mut local = u32_at(p + 42)?;
        let name = String::from_utf8_lossy(bytes.get(p + 46..p + 46 + name_len).ok_or_else(|| bad("truncated zip"))?).to_string();
        // ZIP64 extra field: sizes and offset that did not fit.
        let mut e = p + 46 + name_len;
        let end = e + extra_len;
        while e + 4 <= end {
            let (id, len) = (u16_at(e)?, u16_at(e + 2)?);
            if id == 1 {
                let mut q = e + 4;
                let usize_ = u32_at(p + 24)?;
                if usize_ == 0xffff_ffff {
                    q += 8;
                }
                if csize == 0xffff_ffff {
                    csize = u64_at(q)?;
                    q += 8;
                }
                if local == 0xffff_ffff {
                    local = u64_at(q)?;
                }
            }
            e += 4 + len;
        }
        if u32_at(local)? != 0x0403_4b50 {
            return Err(bad("corrupt zip local header"));
        }
        let start = local + 30 + u16_at(local + 26)? + u16_at(local + 28)?;
        let data = bytes.get(start..start + csize).ok_or_else(|| bad(format!("zip entry {name} is truncated")))?;
        if method != 0 {
            // torch.save stores its entries uncompressed.
            return Err(bad(format!("zip entry {name} is compressed (method {method}); torch.save writes stored entries")));
        }
        let data = data.to_vec();
        out.insert(name, data);
        p += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// One value of the unpickled graph. Containers refer to other nodes by index, so that objects
/// filled after being memoized (dicts, lists, objects) are shared as in Python.
#[derive(Clone, Debug)]
pub enum Node {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    Global { module: String, name: String },
    /// An instance: `class(*args)` (REDUCE / NEWOBJ), then BUILD's state and any items added.
    Object { class: usize, args: usize, state: Option<usize>, items: Vec<(usize, usize)>, list: Vec<usize> },
    /// A persistent id (torch: a tensor storage).
    Persistent(usize),
    Mark,
}

pub struct Pickle {
    pub nodes: Vec<Node>,
    pub root: usize,
}

impl Pickle {
    pub fn parse(data: &[u8]) -> Result<Pickle> {
        let mut nodes: Vec<Node> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        let mut memo: HashMap<u64, usize> = HashMap::new();
        let mut p = 0usize;
        let take = |p: &mut usize, n: usize| -> Result<&[u8]> {
            let s = data.get(*p..*p + n).ok_or_else(|| bad("truncated pickle"))?;
            *p += n;
            Ok(s)
        };
        macro_rules! push {
            ($n:expr) => {{
                nodes.push($n);
                stack.push(nodes.len() - 1);
            }};
        }
        let pop = |stack: &mut Vec<usize>| stack.pop().ok_or_else(|| bad("pickle stack underflow"));
        // Items since the topmost mark (the mark removed).
        let pop_mark = |stack: &mut Vec<usize>, nodes: &Vec<Node>| -> Result<Vec<usize>> {
            let k = stack.iter().rposition(|&i| matches!(nodes[i], Node::Mark)).ok_or_else(|| bad("pickle mark missing"))?;
            let items = stack.split_off(k + 1);
            stack.pop();
            Ok(items)
        };
        loop {
            let op = take(&mut p, 1)?[0];
            match op {
                0x80 => {
                    take(&mut p, 1)?; // PROTO
                }
                0x95 => {
                    take(&mut p, 8)?; // FRAME
                }
                b'.' => break, // STOP
                b'(' => push!(Node::Mark),
                b'N' => push!(Node::None),
                0x88 => push!(Node::Bool(true)),
                0x89 => push!(Node::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap());
                    push!(Node::Int(v as i64))
                }
                b'K' => {
                    let v = take(&mut p, 1)?[0];
                    push!(Node::Int(v as i64))
                }
                b'M' => {
                    let v = u16::from_le_bytes(take(&mut p, 2)?.try_into().unwrap());
                    push!(Node::Int(v as i64))
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement.
                    let n = if op == 0x8a { take(&mut p, 1)?[0] as usize } else { u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap()) as usize };
                    let b = take(&mut p, n)?;
                    if n > 8 {
                        return Err(bad("integer too large in pickle"));
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    push!(Node::Int(v))
                }
                b'G' => {
                    let v = f64::from_be_bytes(take(&mut p, 8)?.try_into().unwrap());
                    push!(Node::Float(v))
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap()) as usize,
                        0x8c => take(&mut p, 1)?[0] as usize,
                        _ => u64::from_le_bytes(take(&mut p, 8)?.try_into().unwrap()) as usize,
                    };
                    let s = String::from_utf8_lossy(take(&mut p, n)?).to_string();
                    push!(Node::Str(s))
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap()) as usize,
                        b'C' => take(&mut p, 1)?[0] as usize,
                        _ => u64::from_le_bytes(take(&mut p, 8)?.try_into().unwrap()) as usize,
                    };
                    let b = take(&mut p, n)?.to_vec();
                    push!(Node::Bytes(b))
                }
                b')' => push!(Node::Tuple(vec![])),
                0x85 | 0x86 | 0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err(bad("pickle stack underflow"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    push!(Node::Tuple(items))
                }
                b't' => {
                    let items = pop_mark(&mut stack, &nodes)?;
                    push!(Node::Tuple(items))
                }
                b']' => push!(Node::List(vec![])),
                b'l' => {
                    let items = pop_mark(&mut stack, &nodes)?;
                    push!(Node::List(items))
                }
                b'}' => push!(Node::Dict(vec![])),
                b'd' => {
                    let items = pop_mark(&mut stack, &nodes)?;
                    push!(Node::Dict(items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0], c[1])).collect()))
                }
                0x8f => push!(Node::Set(vec![])),
                0x90 => {
                    let items = pop_mark(&mut stack, &nodes)?;
                    let top = *stack.last().ok_or_else(|| bad("pickle stack underflow"))?;
                    if let Node::Set(v) = &mut nodes[top] {
                        v.extend(items);
                    }
                }
                0x91 => {
                    let items = pop_mark(&mut stack, &nodes)?;
                    push!(Node::Set(items))
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![pop(&mut stack)?] } else { pop_mark(&mut stack, &nodes)? };
                    let top = *stack.last().ok_or_else(|| bad("pickle stack underflow"))?;
                    match &mut nodes[top] {
                        Node::List(v) => v.extend(items),
                        Node::Object { list, .. } => list.extend(items),
                        _ => return Err(bad("APPEND to a non-list in pickle")),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = pop(&mut stack)?;
                        let k = pop(&mut stack)?;
                        vec![k, v]
                    } else {
                        pop_mark(&mut stack, &nodes)?
                    };
                    let top = *stack.last().ok_or_else(|| bad("pickle stack underflow"))?;
                    let pairs = items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0], c[1]));
                    match &mut nodes[top] {
                        Node::Dict(v) => v.extend(pairs),
                        Node::Object { items, .. } => items.extend(pairs),
                        _ => return Err(bad("SETITEM on a non-dict in pickle")),
                    }
                }
                b'c' => {
                    let line = |p: &mut usize| -> Result<String> {
                        let rest = data.get(*p..).ok_or_else(|| bad("truncated pickle"))?;
                        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| bad("truncated pickle"))?;
                        *p += n + 1;
                        Ok(String::from_utf8_lossy(&rest[..n]).to_string())
                    };
                    let module = line(&mut p)?;
                    let name = line(&mut p)?;
                    push!(Node::Global { module, name })
                }
                0x93 => {
                    let name = pop(&mut stack)?;
                    let module = pop(&mut stack)?;
                    let s = |i: usize| match &nodes[i] {
                        Node::Str(s) => s.clone(),
                        _ => String::new(),
                    };
                    let (module, name) = (s(module), s(name));
                    push!(Node::Global { module, name })
                }
                b'R' | 0x81 => {
                    let args = pop(&mut stack)?;
                    let class = pop(&mut stack)?;
                    push!(Node::Object { class, args, state: None, items: vec![], list: vec![] })
                }
                0x92 => {
                    let _kwargs = pop(&mut stack)?;
                    let args = pop(&mut stack)?;
                    let class = pop(&mut stack)?;
                    push!(Node::Object { class, args, state: None, items: vec![], list: vec![] })
                }
                b'b' => {
                    let st = pop(&mut stack)?;
                    let top = *stack.last().ok_or_else(|| bad("pickle stack underflow"))?;
                    match &mut nodes[top] {
                        Node::Object { state, .. } => *state = Some(st),
                        _ => {
                            // BUILD on a plain value (e.g. a dict subclass rebuilt as a dict): keep it.
                        }
                    }
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    push!(Node::Persistent(pid))
                }
                b'q' => {
                    let k = take(&mut p, 1)?[0] as u64;
                    memo.insert(k, *stack.last().ok_or_else(|| bad("pickle stack underflow"))?);
                }
                b'r' => {
                    let k = u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap()) as u64;
                    memo.insert(k, *stack.last().ok_or_else(|| bad("pickle stack underflow"))?);
                }
                0x94 => {
                    let k = memo.len() as u64;
                    memo.insert(k, *stack.last().ok_or_else(|| bad("pickle stack underflow"))?);
                }
                b'h' => {
                    let k = take(&mut p, 1)?[0] as u64;
                    stack.push(*memo.get(&k).ok_or_else(|| bad("pickle memo miss"))?);
                }
                b'j' => {
                    let k = u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap()) as u64;
                    stack.push(*memo.get(&k).ok_or_else(|| bad("pickle memo miss"))?);
                }
                b'0' => {
                    pop(&mut stack)?;
                }
                b'2' => {
                    let top = *stack.last().ok_or_else(|| bad("pickle stack underflow"))?;
                    stack.push(top);
                }
                other => return Err(bad(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
        let root = stack.pop().ok_or_else(|| bad("empty pickle"))?;
        Ok(Pickle { nodes, root })
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn str(&self, i: usize) -> Option<&str> {
        match &self.nodes[i] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, i: usize) -> Option<i64> {
        match &self.nodes[i] {
            Node::Int(v) => Some(*v),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn float(&self, i: usize) -> Option<f64> {
        match &self.nodes[i] {
            Node::Float(v) => Some(*v),
            Node::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn bool(&self, i: usize) -> Option<bool> {
        match &self.nodes[i] {
            Node::Bool(b) => Some(*b),
            Node::Int(v) => Some(*v != 0),
            _ => None,
        }
    }

    pub fn is_none(&self, i: usize) -> bool {
        matches!(self.nodes[i], Node::None)
    }

    /// Items of a list or tuple (or of an object built by appending).
    pub fn seq(&self, i: usize) -> Option<&[usize]> {
        match &self.nodes[i] {
            Node::List(v) | Node::Tuple(v) | Node::Set(v) => Some(v),
            Node::Object { list, .. } if !list.is_empty() => Some(list),
            _ => None,
        }
    }

    /// Key / value pairs of a dict, or of a dict-like object (OrderedDict, defaultdict).
    pub fn pairs(&self, i: usize) -> Option<&[(usize, usize)]> {
        match &self.nodes[i] {
            Node::Dict(v) => Some(v),
            Node::Object { items, .. } => Some(items),
            _ => None,
        }
    }

    /// The value of string key `key` of a dict.
    pub fn get(&self, i: usize, key: &str) -> Option<usize> {
        self.pairs(i)?.iter().find(|(k, _)| self.str(*k) == Some(key)).map(|&(_, v)| v)
    }

    /// The class of an object as "module.name".
    pub fn class_of(&self, i: usize) -> Option<String> {
        match &self.nodes[i] {
            Node::Object { class, .. } => match &self.nodes[*class] {
                Node::Global { module, name } => Some(format!("{module}.{name}")),
                _ => None,
            },
            _ => None,
        }
    }

    /// A numpy array (`numpy.core.multiarray._reconstruct` + BUILD state) of strings, as
    /// object or unicode dtype.
    pub fn numpy_strings(&self, i: usize) -> Option<Vec<String>> {
        let (dtype, data) = self.numpy_parts(i)?;
        match &self.nodes[data] {
            Node::List(items) => items.iter().map(|&x| self.str(x).map(|s| s.to_string())).collect(),
            Node::Bytes(b) if dtype.starts_with('U') => {
                let width: usize = dtype[1..].parse().ok()?;
                Some(
                    b.chunks(4 * width.max(1))
                        .map(|c| {
                            c.chunks_exact(4)
                                .map(|u| u32::from_le_bytes(u.try_into().unwrap()))
                                .take_while(|&u| u != 0)
                                .filter_map(char::from_u32)
                                .collect()
                        })
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// A numeric numpy array as f64 (dtypes f4, f8, i4, i8, bool).
    pub fn numpy_numbers(&self, i: usize) -> Option<Vec<f64>> {
        let (dtype, data) = self.numpy_parts(i)?;
        let Node::Bytes(b) = &self.nodes[data] else { return None };
        Some(match dtype.as_str() {
            "f4" => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            "f8" => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            "i4" => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            "i8" => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            "b1" => b.iter().map(|&x| x as f64).collect(),
            _ => return None,
        })
    }

    /// (dtype string such as "O8", "U7", "f4"; the data node) of a pickled numpy array.
    fn numpy_parts(&self, i: usize) -> Option<(String, usize)> {
        let Node::Object { state: Some(st), .. } = &self.nodes[i] else { return None };
        if !self.class_of(i)?.ends_with("_reconstruct") {
            return None;
        }
        let st = self.seq(*st)?;
        let (dtype_node, data) = (*st.get(2)?, *st.get(4)?);
        let Node::Object { args, .. } = &self.nodes[dtype_node] else { return None };
        let dtype = self.str(*self.seq(*args)?.first()?)?.to_string();
        Some((dtype, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_2_and_4_values() {
        // pickle.dumps({"a": [1, -2, 3.5, "x"], "b": (True, None)}, protocol=2)
        let p2: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88N\x86q\x05u.";
        let p = Pickle::parse(p2).unwrap();
        let a = p.get(p.root, "a").unwrap();
        let items = p.seq(a).unwrap();
        assert_eq!(p.int(items[0]), Some(1));
        assert_eq!(p.int(items[1]), Some(-2));
        assert_eq!(p.float(items[2]), Some(3.5));
        assert_eq!(p.str(items[3]), Some("x"));
        let b = p.seq(p.get(p.root, "b").unwrap()).unwrap();
        assert_eq!(p.bool(b[0]), Some(true));
        assert!(p.is_none(b[1]));
        // pickle.dumps({"k": 70000, "s": "é", "big": -2**40}, protocol=4)
        let p4: &[u8] = b"\x80\x04\x95%\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01k\x94Jp\x11\x01\x00\x8c\x01s\x94\x8c\x02\xc3\xa9\x94\x8c\x03big\x94\x8a\x06\x00\x00\x00\x00\x00\xffu.";
        let p = Pickle::parse(p4).unwrap();
        assert_eq!(p.int(p.get(p.root, "k").unwrap()), Some(70000));
        assert_eq!(p.str(p.get(p.root, "s").unwrap()), Some("é"));
        assert_eq!(p.int(p.get(p.root, "big").unwrap()), Some(-(1i64 << 40)));
    }
}
