// SPDX-License-Identifier: Apache-2.0
//! The sleeve data plane without I/O: the datagram format, the switch that
//! decides where frames go, the UDP path state, the datagram encryption per
//! neighbour, and what carries TCP super-frames (offload headers, fragments
//! put back together). The TAP and UDP loops that drive them live in
//! [`crate::router::sleeve`].

pub mod frame;
pub mod mtu;
pub mod offload;
pub mod path;
pub mod reassembly;
pub mod sealer;
pub mod switch;
