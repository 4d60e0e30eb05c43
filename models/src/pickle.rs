//! A minimal pickle reader, enough for PyTorch checkpoints that pickle a whole `nn.Module`.
//!
//! It evaluates the opcode stream into a generic [`Value`] tree: classes are never instantiated,
//! `NEWOBJ`/`REDUCE` of unknown globals become [`Value::Object`] with their arguments, and
//! `BUILD` attaches the state (a module's `__dict__`). Tensors (`torch._utils._rebuild_tensor_v2`)
//! become [`Value::Tensor`] referring to a storage record inside the checkpoint zip.

use std::cell::RefCell;
use std::rc::Rc;

/// Error while evaluating a pickle stream.
#[derive(Debug, thiserror::Error)]
#[error("pickle stream invalid at byte {pos}: {msg}")]
pub struct PickleError {
    /// Byte offset of the failing opcode.
    pub pos: usize,
    /// What went wrong.
    pub msg: String,
}

/// A storage record (`persistent_load` id of a tensor storage).
#[derive(Debug, Clone)]
pub struct StorageRef {
    /// Storage class name, e.g. `HalfStorage`.
    pub kind: String,
    /// Key of the record: the zip entry `<archive>/data/<key>`.
    pub key: String,
    /// Number of elements in the storage.
    pub numel: usize,
}

/// A tensor view over a storage.
#[derive(Debug, Clone)]
pub struct TensorRef {
    /// The storage holding the data.
    pub storage: StorageRef,
    /// Offset in elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// An instance of a class that was not evaluated.
#[derive(Debug)]
pub struct Object {
    /// `module.name` of the class or callable.
    pub class: String,
    /// Constructor / reduce arguments.
    pub args: Vec<Value>,
    /// State set by `BUILD` (for modules: their `__dict__`).
    pub state: Option<Value>,
}

/// A pickled value.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer (longs beyond 64 bits are rejected).
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string.
    Str(Rc<str>),
    /// A byte string.
    Bytes(Rc<[u8]>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list (mutable while unpickling).
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict, in insertion order (mutable while unpickling).
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A reference to a global (class or function).
    Global(Rc<str>),
    /// An object built from a class or callable.
    Object(Rc<RefCell<Object>>),
    /// A storage record.
    Storage(Rc<StorageRef>),
    /// A tensor.
    Tensor(Rc<TensorRef>),
    /// The stack marker (internal).
    Mark,
}

impl Value {
    /// The string, when this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Looks up a string key in a dict.
    pub fn dict_get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d
                .borrow()
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as usize),
            _ => None,
        }
    }

    fn as_usize_vec(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_usize).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(PickleError {
                pos: self.pos,
                msg: "unexpected end of data (truncated?)".into(),
            }),
        }
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let start = self.pos;
        let rest = &self.data[start..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or(PickleError {
            pos: start,
            msg: "unterminated line".into(),
        })?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| PickleError {
            pos: start,
            msg: "non-UTF-8 line".into(),
        })
    }
}

fn utf8(b: &[u8], pos: usize) -> Result<Rc<str>, PickleError> {
    std::str::from_utf8(b)
        .map(Rc::from)
        .map_err(|_| PickleError {
            pos,
            msg: "invalid UTF-8 string".into(),
        })
}

/// Evaluates a pickle stream (protocols 0-5 subset used by `torch.save`).
pub fn load(data: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: std::collections::HashMap<u32, Value> = std::collections::HashMap::new();
    loop {
        let at = r.pos;
        let err = |msg: &str| PickleError {
            pos: at,
            msg: msg.to_string(),
        };
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            b'.' => return stack.pop().ok_or_else(|| err("STOP on empty stack")),
            b'(' => stack.push(Value::Mark),
            b')' => stack.push(Value::Tuple(Rc::new(Vec::new()))),
            b']' => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'}' => stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => {
                let v = r.u32()? as i32;
                stack.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = r.u8()?;
                stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = r.u16()?;
                stack.push(Value::Int(v as i64));
            }
            0x8a => {
                // LONG1
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(err("integer longer than 64 bits"));
                }
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                let b = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(Value::Float(f64::from_be_bytes(a)));
            }
            b'X' => {
                let n = r.u32()? as usize;
                let b = r.take(n)?;
                stack.push(Value::Str(utf8(b, at)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                stack.push(Value::Str(utf8(b, at)?));
            }
            b'T' | b'B' => {
                let n = r.u32()? as usize;
                let b = r.take(n)?;
                stack.push(Value::Bytes(Rc::from(b)));
            }
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                stack.push(Value::Bytes(Rc::from(b)));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(Rc::from(format!("{module}.{name}"))));
            }
            0x93 => {
                // STACK_GLOBAL
                let name = stack.pop().ok_or_else(|| err("empty stack"))?;
                let module = stack.pop().ok_or_else(|| err("empty stack"))?;
                match (module.as_str(), name.as_str()) {
                    (Some(m), Some(n)) => stack.push(Value::Global(Rc::from(format!("{m}.{n}")))),
                    _ => return Err(err("STACK_GLOBAL needs two strings")),
                }
            }
            b'q' => {
                let i = r.u8()? as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| err("empty stack"))?);
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(i, stack.last().cloned().ok_or_else(|| err("empty stack"))?);
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| err("empty stack"))?);
            }
            b'h' => {
                let i = r.u8()? as u32;
                stack.push(
                    memo.get(&i)
                        .cloned()
                        .ok_or_else(|| err("unknown memo key"))?,
                );
            }
            b'j' => {
                let i = r.u32()?;
                stack.push(
                    memo.get(&i)
                        .cloned()
                        .ok_or_else(|| err("unknown memo key"))?,
                );
            }
            b't' => {
                let items = pop_mark(&mut stack).ok_or_else(|| err("no MARK"))?;
                stack.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(err("stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(Rc::new(items)));
            }
            b'l' => {
                let items = pop_mark(&mut stack).ok_or_else(|| err("no MARK"))?;
                stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'd' => {
                let items = pop_mark(&mut stack).ok_or_else(|| err("no MARK"))?;
                let pairs = pairs(items).ok_or_else(|| err("odd number of dict items"))?;
                stack.push(Value::Dict(Rc::new(RefCell::new(pairs))));
            }
            b'a' => {
                let v = stack.pop().ok_or_else(|| err("empty stack"))?;
                // appending to an opaque object is ignored
                if let Some(Value::List(l)) = stack.last() {
                    l.borrow_mut().push(v);
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack).ok_or_else(|| err("no MARK"))?;
                if let Some(Value::List(l)) = stack.last() {
                    l.borrow_mut().extend(items);
                }
            }
            b's' => {
                let v = stack.pop().ok_or_else(|| err("empty stack"))?;
                let k = stack.pop().ok_or_else(|| err("empty stack"))?;
                match stack.last() {
                    Some(Value::Dict(d)) => d.borrow_mut().push((k, v)),
                    _ => return Err(err("SETITEM on a non-dict")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack).ok_or_else(|| err("no MARK"))?;
                let kv = pairs(items).ok_or_else(|| err("odd number of dict items"))?;
                match stack.last() {
                    Some(Value::Dict(d)) => d.borrow_mut().extend(kv),
                    _ => return Err(err("SETITEMS on a non-dict")),
                }
            }
            0x8f => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))), // EMPTY_SET
            0x90 => {
                // ADDITEMS
                let items = pop_mark(&mut stack).ok_or_else(|| err("no MARK"))?;
                if let Some(Value::List(l)) = stack.last() {
                    l.borrow_mut().extend(items);
                }
            }
            0x91 => {
                let items = pop_mark(&mut stack).ok_or_else(|| err("no MARK"))?;
                stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'Q' => {
                let pid = stack.pop().ok_or_else(|| err("empty stack"))?;
                stack.push(persistent_load(&pid).ok_or_else(|| err("unsupported persistent id"))?);
            }
            b'R' => {
                let args = stack.pop().ok_or_else(|| err("empty stack"))?;
                let func = stack.pop().ok_or_else(|| err("empty stack"))?;
                let args = match args {
                    Value::Tuple(t) => t,
                    _ => return Err(err("REDUCE arguments are not a tuple")),
                };
                stack.push(reduce(func, &args).map_err(|m| err(&m))?);
            }
            0x81 => {
                // NEWOBJ
                let args = stack.pop().ok_or_else(|| err("empty stack"))?;
                let cls = stack.pop().ok_or_else(|| err("empty stack"))?;
                let args = match args {
                    Value::Tuple(t) => t.as_ref().clone(),
                    _ => Vec::new(),
                };
                stack.push(new_object(cls, args));
            }
            0x92 => {
                // NEWOBJ_EX
                let _kwargs = stack.pop().ok_or_else(|| err("empty stack"))?;
                let args = stack.pop().ok_or_else(|| err("empty stack"))?;
                let cls = stack.pop().ok_or_else(|| err("empty stack"))?;
                let args = match args {
                    Value::Tuple(t) => t.as_ref().clone(),
                    _ => Vec::new(),
                };
                stack.push(new_object(cls, args));
            }
            b'b' => {
                let state = stack.pop().ok_or_else(|| err("empty stack"))?;
                match stack.last() {
                    Some(Value::Object(o)) => o.borrow_mut().state = Some(state),
                    Some(Value::Dict(d)) => {
                        if let Value::Dict(s) = state {
                            let kv = s.borrow().clone();
                            d.borrow_mut().extend(kv);
                        }
                    }
                    Some(_) => {} // tensors, lists: state is irrelevant here
                    None => return Err(err("BUILD on empty stack")),
                }
            }
            b'0' => {
                stack.pop().ok_or_else(|| err("empty stack"))?;
            }
            b'2' => {
                let v = stack.last().cloned().ok_or_else(|| err("empty stack"))?;
                stack.push(v);
            }
            b'1' => {
                pop_mark(&mut stack).ok_or_else(|| err("no MARK"))?;
            }
            other => return Err(err(&format!("unsupported opcode 0x{other:02x}"))),
        }
    }
}

fn pop_mark(stack: &mut Vec<Value>) -> Option<Vec<Value>> {
    let idx = stack.iter().rposition(|v| matches!(v, Value::Mark))?;
    let items = stack.split_off(idx + 1);
    stack.pop();
    Some(items)
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

fn new_object(cls: Value, args: Vec<Value>) -> Value {
    let class = match &cls {
        Value::Global(g) => g.to_string(),
        _ => "?".to_string(),
    };
    Value::Object(Rc::new(RefCell::new(Object {
        class,
        args,
        state: None,
    })))
}

/// `persistent_load` for torch zip checkpoints: `('storage', StorageClass, key, location, numel)`.
fn persistent_load(pid: &Value) -> Option<Value> {
    let t = match pid {
        Value::Tuple(t) => t,
        _ => return None,
    };
    if t.len() < 5 || t[0].as_str() != Some("storage") {
        return None;
    }
    let kind = match &t[1] {
        Value::Global(g) => g.rsplit('.').next().unwrap_or("").to_string(),
        _ => return None,
    };
    let key = t[2].as_str()?.to_string();
    let numel = t[4].as_usize()?;
    Some(Value::Storage(Rc::new(StorageRef { kind, key, numel })))
}

fn reduce(func: Value, args: &[Value]) -> Result<Value, String> {
    let name = match &func {
        Value::Global(g) => g.to_string(),
        _ => return Ok(new_object(func, args.to_vec())),
    };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let storage = match args.first() {
                Some(Value::Storage(s)) => s.as_ref().clone(),
                _ => return Err("tensor without a storage".into()),
            };
            let offset = args
                .get(1)
                .and_then(Value::as_usize)
                .ok_or("bad tensor offset")?;
            let size = args
                .get(2)
                .and_then(Value::as_usize_vec)
                .ok_or("bad tensor size")?;
            let stride = args
                .get(3)
                .and_then(Value::as_usize_vec)
                .ok_or("bad tensor stride")?;
            if size.len() != stride.len() {
                return Err("tensor size/stride rank mismatch".into());
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage,
                offset,
                size,
                stride,
            })))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err("parameter without a tensor".into()),
            }
        }
        "torch.Size" | "__builtin__.tuple" | "builtins.tuple" => match args.first() {
            Some(Value::Tuple(t)) => Ok(Value::Tuple(t.clone())),
            Some(Value::List(l)) => Ok(Value::Tuple(Rc::new(l.borrow().clone()))),
            _ => Ok(Value::Tuple(Rc::new(Vec::new()))),
        },
        _ => Ok(new_object(func, args.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dict_with_ints_and_strings() {
        // pickle.dumps({'a': 1, 'b': [2, 'x']}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(K\x02X\x01\x00\x00\x00xq\x04eu.";
        let v = load(data).unwrap();
        assert!(matches!(v.dict_get("a"), Some(Value::Int(1))));
        match v.dict_get("b") {
            Some(Value::List(l)) => {
                let l = l.borrow();
                assert!(matches!(l[0], Value::Int(2)));
                assert_eq!(l[1].as_str(), Some("x"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let data = b"\x80\x02}q\x00(X\x01\x00\x00";
        assert!(load(data).is_err());
    }
}
