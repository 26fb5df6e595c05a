//! Control plane only: applies one `lvc-ctl shape …` request to a copy of
//! the shaping configuration. The caller validates the result as a whole
//! and publishes it, or keeps the running one: nothing is half-applied.

use lvc_proto::shape::{DevShape, PoliceTarget, ShapeConfig};
use lvc_proto::{ErrorCode, ErrorReply, Request};

fn invalid(m: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidArgument, m)
}

fn missing(m: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::NotFound, m)
}

fn exists(m: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::Exists, m)
}

fn dev_mut<'a>(cfg: &'a mut ShapeConfig, dev: &str) -> Result<&'a mut DevShape, ErrorReply> {
    cfg.devs.iter_mut().find(|d| d.dev == dev).ok_or_else(|| {
        missing(format!(
            "interface {dev} is not shaped; start with `lvc-ctl shape set-root --dev {dev} --rate RATE`"
        ))
    })
}

/// Applies `req` (a `Shape*` request) to `cfg`.
pub fn edit(cfg: &mut ShapeConfig, req: &Request) -> Result<(), ErrorReply> {
    match req {
        Request::ShapeSetRoot { dev, rate, default } => {
            match cfg.devs.iter_mut().find(|d| d.dev == *dev) {
                Some(d) => {
                    d.rate = *rate;
                    d.default = *default;
                }
                None => {
                    let mut d = DevShape::new(dev, *rate);
                    d.default = *default;
                    cfg.devs.push(d);
                }
            }
        }
        Request::ShapeDelRoot { dev } => {
            dev_mut(cfg, dev)?;
            cfg.devs.retain(|d| d.dev != *dev);
            cfg.police
                .retain(|p| !matches!(&p.target, PoliceTarget::Class { dev: d, .. } if d == dev));
        }
        Request::ShapeAddClass { dev, class } => {
            let d = dev_mut(cfg, dev)?;
            if d.class(class.classid).is_some() {
                return Err(exists(format!(
                    "{dev} already has class {}; use change-class",
                    class.classid
                )));
            }
            if let Some(p) = class.parent.filter(|p| !p.is_root())
                && d.class(p).is_none()
            {
                return Err(missing(format!("{dev} has no class {p} (the parent)")));
            }
            d.classes.push(class.clone());
        }
        Request::ShapeChangeClass { dev, class } => {
            let d = dev_mut(cfg, dev)?;
            let slot = d
                .classes
                .iter_mut()
                .find(|c| c.classid == class.classid)
                .ok_or_else(|| missing(format!("{dev} has no class {}", class.classid)))?;
            if slot.parent.filter(|p| !p.is_root()) != class.parent.filter(|p| !p.is_root()) {
                return Err(invalid(format!(
                    "class {}: change-class cannot move a class to another parent",
                    class.classid
                )));
            }
            *slot = class.clone();
        }
        Request::ShapeDelClass { dev, classid } => {
            let d = dev_mut(cfg, dev)?;
            if d.class(*classid).is_none() {
                return Err(missing(format!("{dev} has no class {classid}")));
            }
            if !d.is_leaf(*classid) {
                return Err(invalid(format!(
                    "class {classid} has children; delete them first"
                )));
            }
            if let Some(f) = d.filters.iter().find(|f| f.flowid == *classid) {
                return Err(invalid(format!(
                    "filter prio {} sends traffic to class {classid}; delete it first",
                    f.prio
                )));
            }
            d.classes.retain(|c| c.classid != *classid);
            cfg.police.retain(|p| {
                !matches!(&p.target, PoliceTarget::Class { dev: d, classid: c } if d == dev && c == classid)
            });
        }
        Request::ShapeAddFilter { dev, filter } => {
            let d = dev_mut(cfg, dev)?;
            if d.filters.iter().any(|f| f.prio == filter.prio) {
                return Err(exists(format!(
                    "{dev} already has a filter with prio {}",
                    filter.prio
                )));
            }
            d.filters.push(filter.clone());
        }
        Request::ShapeDelFilter { dev, prio } => {
            let d = dev_mut(cfg, dev)?;
            let before = d.filters.len();
            d.filters.retain(|f| f.prio != *prio);
            if d.filters.len() == before {
                return Err(missing(format!("{dev} has no filter with prio {prio}")));
            }
        }
        Request::ShapeAddPolice { police } => {
            if cfg.police.iter().any(|p| p.target == police.target) {
                return Err(exists(format!("{} already has a policer", police.target)));
            }
            cfg.police.push(police.clone());
        }
        Request::ShapeDelPolice { target } => {
            let before = cfg.police.len();
            cfg.police.retain(|p| p.target != *target);
            if cfg.police.len() == before {
                return Err(missing(format!("{target} has no policer")));
            }
        }
        other => {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!("not a shaping request: {other:?}"),
            ));
        }
    }
    cfg.validate().map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvc_proto::shape::{ClassSpec, FilterSpec, Qdisc};

    fn class(id: &str, parent: Option<&str>, rate: &str) -> ClassSpec {
        ClassSpec {
            classid: id.parse().unwrap(),
            parent: parent.map(|p| p.parse().unwrap()),
            rate: rate.parse().unwrap(),
            ceil: None,
            burst: None,
            prio: 0,
            bounded: false,
            isolated: false,
            qdisc: Qdisc::default(),
        }
    }

    fn add(dev: &str, c: ClassSpec) -> Request {
        Request::ShapeAddClass {
            dev: dev.into(),
            class: c,
        }
    }

    #[test]
    fn builds_a_tree_and_refuses_what_does_not_fit() {
        let mut cfg = ShapeConfig::default();
        let e = edit(&mut cfg, &add("d1", class("1:10", None, "1mbit"))).unwrap_err();
        assert!(e.message.contains("is not shaped"), "{}", e.message);
        edit(
            &mut cfg,
            &Request::ShapeSetRoot {
                dev: "d1".into(),
                rate: "100mbit".parse().unwrap(),
                default: None,
            },
        )
        .unwrap();
        edit(&mut cfg, &add("d1", class("1:1", None, "100mbit"))).unwrap();
        edit(&mut cfg, &add("d1", class("1:10", Some("1:1"), "70mbit"))).unwrap();
        let e = edit(
            &mut cfg.clone(),
            &add("d1", class("1:20", Some("1:2"), "1mbit")),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(
            e.message.contains("no class 1:2 (the parent)"),
            "{}",
            e.message
        );
        let e = edit(
            &mut cfg.clone(),
            &add("d1", class("1:20", Some("1:1"), "200mbit")),
        )
        .unwrap_err();
        assert!(
            e.message.contains("above the parent's ceil"),
            "{}",
            e.message
        );
        // (The daemon edits a copy too and keeps it only if it validates.)
        let filter = |prio, to: &str| Request::ShapeAddFilter {
            dev: "d1".into(),
            filter: FilterSpec {
                prio,
                matches: vec!["ip tos 0x30 0xff".parse().unwrap()],
                flowid: to.parse().unwrap(),
            },
        };
        let e = edit(&mut cfg.clone(), &filter(1, "1:1")).unwrap_err();
        assert!(e.message.contains("has children"), "{}", e.message);
        edit(&mut cfg, &filter(1, "1:10")).unwrap();
        let del = Request::ShapeDelClass {
            dev: "d1".into(),
            classid: "1:10".parse().unwrap(),
        };
        let e = edit(&mut cfg.clone(), &del).unwrap_err();
        assert!(e.message.contains("filter prio 1"), "{}", e.message);
        edit(
            &mut cfg,
            &Request::ShapeDelFilter {
                dev: "d1".into(),
                prio: 1,
            },
        )
        .unwrap();
        edit(&mut cfg, &del).unwrap();
        edit(&mut cfg, &Request::ShapeDelRoot { dev: "d1".into() }).unwrap();
        assert!(cfg.is_empty());
    }
}
