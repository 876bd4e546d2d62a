// SPDX-License-Identifier: Apache-2.0
//! The sleeve data plane without I/O: the datagram format, the switch that
//! decides where frames go, the UDP path state and the datagram encryption
//! per neighbour. The TAP
//! and UDP loops that drive them live in [`crate::router::sleeve`].

pub mod frame;
pub mod mtu;
pub mod path;
pub mod sealer;
pub mod switch;
