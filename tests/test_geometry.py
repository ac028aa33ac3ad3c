"""Statistical dimensions, quadrature bounds and the exact descent-cone projection.

Ground truth is computed here independently: direct sums over eigenvalues, dense
eigendecompositions of small matrices, a one-dimensional integral for the circular
cone, and cvxpy (Clarabel) for projections.
"""

import numpy as np
import pytest
from cases import reference_lanczos, reference_slq
from scipy.integrate import quad
from scipy.stats import ortho_group

from pruning_limit.descent_cone import DescentCone, project_onto_descent_cone, statdim_exact
from pruning_limit.quadrature import gauss_radau_rule, quadrature_bounds
from pruning_limit.spectrum import Spectrum
from pruning_limit.statdim import (
    mean_curvature,
    orthogonal_statistical_dimension,
    statistical_dimension,
    trace_bound,
)


def exact_spectrum(eigenvalues, zero_rows=0, curvature="hessian"):
    eigenvalues = np.asarray(eigenvalues, dtype=float)
    n = eigenvalues.size
    return Spectrum(
        nodes=eigenvalues[None],
        weights=np.full((1, n), 1.0 / n),
        dimension=n + zero_rows,
        zero_rows=zero_rows,
        curvature=curvature,
        method="exact",
    )


def circular_cone_fraction(dimension, angle):
    """delta(Circ_D(angle)) / D by the polar-angle integral.

    ||g||^2 is independent of g's direction. For g at angle t from the axis,
    ||Pi(g)||^2 = ||g||^2 h(t) with h = 1 inside the cone, cos^2(t - angle) up to
    angle + pi/2 and 0 beyond; t has density ~ sin^(D-2) t.
    """

    def h(t):
        if t <= angle:
            return 1.0
        return np.cos(t - angle) ** 2 if t < angle + np.pi / 2 else 0.0

    def density(t):
        return np.exp((dimension - 2) * np.log(np.sin(t)))

    breaks = [angle, min(angle + np.pi / 2, np.pi)]
    top = quad(lambda t: h(t) * density(t), 0, np.pi, points=breaks, limit=200)[0]
    return top / quad(density, 0, np.pi, limit=200)[0]


# -- closed forms ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["abs", "flat"])
def test_statistical_dimension_is_the_direct_sum(policy):
    rng = np.random.default_rng(0)
    eigenvalues = rng.normal(0.2, 0.5, size=60)
    spectrum = exact_spectrum(eigenvalues, zero_rows=7)
    radius, epsilon = 1.7, 0.03
    r_squared = 2 * epsilon / (np.abs(eigenvalues) if policy == "abs" else eigenvalues)
    if policy == "abs":
        terms = r_squared / (radius**2 + r_squared)
    else:  # lambda <= 0: an unbounded direction, adds 1
        terms = np.where(eigenvalues <= 0, 1.0, r_squared / (radius**2 + r_squared))
    expected = (terms.sum() + 7) / 67
    assert statistical_dimension(spectrum, radius, epsilon, policy) == pytest.approx(expected)


def test_policy_is_irrelevant_for_a_psd_spectrum():
    spectrum = exact_spectrum(np.linspace(0.0, 2.0, 30), curvature="ggn")
    values = [statistical_dimension(spectrum, 0.9, 0.01, p) for p in ("abs", "flat")]
    assert values[0] == pytest.approx(values[1])


def test_orthogonal_form_equals_paper_at_one_half_and_one_at_p_one():
    spectrum = exact_spectrum(np.linspace(0.01, 1.0, 40))
    paper = statistical_dimension(spectrum, 2.0, 0.05)
    assert orthogonal_statistical_dimension(spectrum, 2.0, 0.05, 0.5) == pytest.approx(paper)
    assert orthogonal_statistical_dimension(spectrum, 2.0, 0.05, 1.0) == pytest.approx(1.0)
    # R^2 (1 - p)/p: at p = 0.2 the effective radius is R * 2.
    assert orthogonal_statistical_dimension(spectrum, 2.0, 0.05, 0.2) == pytest.approx(
        statistical_dimension(spectrum, 4.0, 0.05)
    )


def test_trace_bound_is_below_the_closed_form():
    rng = np.random.default_rng(1)
    for _ in range(20):
        spectrum = exact_spectrum(rng.normal(0, 1, size=50) ** 3, zero_rows=3)
        radius, epsilon = rng.uniform(0.1, 5), 10 ** rng.uniform(-4, 0)
        for policy in ("abs", "flat"):
            bound = trace_bound(spectrum, radius, epsilon, policy)
            assert bound <= statistical_dimension(spectrum, radius, epsilon, policy) + 1e-12
    trace, error = mean_curvature(exact_spectrum([-1.0, 3.0]), "abs")
    assert (trace, error) == (pytest.approx(2.0), 0.0)


def test_limits_of_the_closed_form():
    spectrum = exact_spectrum(np.linspace(0.0, 1.0, 11), zero_rows=4)
    assert statistical_dimension(spectrum, 0.0, 0.1) == pytest.approx(1.0)
    assert statistical_dimension(spectrum, 1.0, np.inf) == pytest.approx(1.0)
    # Only the zero eigenvalue and the zero rows survive an infinite radius.
    assert statistical_dimension(spectrum, 1e200, 1.0) == pytest.approx(5 / 15)
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="epsilon"):
            statistical_dimension(spectrum, 1.0, bad)
    with pytest.raises(ValueError, match="policy"):
        statistical_dimension(spectrum, 1.0, 0.1, "absolute")


# -- quadrature bounds -------------------------------------------------------------------------


def test_gauss_radau_rule_has_the_node_and_its_degree_of_exactness():
    rng = np.random.default_rng(2)
    a_matrix = rng.standard_normal((40, 40))
    matrix = a_matrix @ a_matrix.T / 40
    start = rng.standard_normal(40)
    start /= np.linalg.norm(start)
    alphas, betas = reference_lanczos(matrix, start, 6)
    nodes, weights = gauss_radau_rule(alphas, betas, 0.0)
    assert np.min(np.abs(nodes)) < 1e-10
    assert weights.sum() == pytest.approx(1.0)
    eigenvalues, vectors = np.linalg.eigh(matrix)
    mass = (vectors.T @ start) ** 2
    for degree in range(2 * 6 - 1):  # exact up to 2m - 2
        assert weights @ nodes**degree == pytest.approx(mass @ eigenvalues**degree, rel=1e-8)


@pytest.mark.parametrize("steps", [3, 8, 20])
def test_gauss_and_radau_bracket_each_probe_for_a_psd_matrix(steps):
    rng = np.random.default_rng(steps)
    dimension = 300
    eigenvalues = np.concatenate(
        [np.zeros(50), np.exp(rng.uniform(np.log(1e-5), 0, dimension - 50))]
    )
    basis = ortho_group.rvs(dimension, random_state=steps)
    matrix = (basis * eigenvalues) @ basis.T
    spectrum, probes = reference_slq(matrix, 4, 20, rng, "ggn")
    mass = (probes @ basis) ** 2  # each unit probe's weight on each eigenvector
    for scale in (1.0, 1e2, 1e4, 1e7):

        def f(x, scale=scale):
            return 1.0 / (1.0 + scale * x)

        exact = mass @ f(eigenvalues)
        lower, upper = quadrature_bounds(spectrum, f, steps=steps)
        assert np.all(lower <= exact * (1 + 1e-10))
        assert np.all(exact <= upper * (1 + 1e-10))
        # The plain Gauss estimate is the lower bound itself.
        gauss = spectrum.per_probe(f, *spectrum.rule(steps))
        np.testing.assert_allclose(gauss, lower, rtol=1e-10, atol=1e-14)


def test_bounds_on_the_absolute_value_of_an_indefinite_matrix():
    rng = np.random.default_rng(5)
    dimension = 250
    eigenvalues = np.concatenate(
        [-np.exp(rng.uniform(-7, -3, 40)), np.exp(rng.uniform(-7, 0, dimension - 40))]
    )
    basis = ortho_group.rvs(dimension, random_state=5)
    matrix = (basis * eigenvalues) @ basis.T
    spectrum, probes = reference_slq(matrix, 3, 24, rng, "hessian")
    mass = (probes @ basis) ** 2
    for scale in (1.0, 30.0, 1e3):

        def f(x, scale=scale):
            return 1.0 / (1.0 + scale * x)

        exact = mass @ f(np.abs(eigenvalues))
        for steps in (8, 24):
            lower, upper = quadrature_bounds(spectrum, f, steps=steps, absolute=True)
            assert np.all(lower <= exact * (1 + 1e-10))
            assert np.all(exact <= upper * (1 + 1e-10))
    with pytest.raises(ValueError, match="SLQ"):
        quadrature_bounds(exact_spectrum([1.0, 2.0]), lambda x: x)


def test_bracket_tightens_with_steps_and_loosens_with_the_scale():
    """The large-c problem: at c lambda_max ~ 1e4 a few dozen nodes do not resolve g_c."""
    rng = np.random.default_rng(7)
    dimension = 400
    eigenvalues = np.exp(rng.uniform(np.log(1e-6), 0, dimension))
    basis = ortho_group.rvs(dimension, random_state=7)
    spectrum, _ = reference_slq((basis * eigenvalues) @ basis.T, 2, 60, rng, "ggn")

    def width(scale, steps):
        lower, upper = quadrature_bounds(spectrum, lambda x: 1 / (1 + scale * x), steps=steps)
        return float(np.mean(upper - lower) / np.mean(lower))

    assert width(1e4, 60) < width(1e4, 30) < width(1e4, 15)
    assert width(1e2, 60) < 1e-6 < 0.05 < width(1e4, 60)


# -- the exact statistical dimension ----------------------------------------------------------


@pytest.mark.parametrize("dimension, ratio", [(5, 0.3), (20, 0.5), (60, 0.8)])
def test_statdim_exact_matches_the_circular_cone(dimension, ratio):
    """A ball of radius r seen from distance R subtends a circular cone, sin(angle) = r/R."""
    rotation = ortho_group.rvs(dimension, random_state=dimension)
    curvature = rotation @ (3.0 * np.eye(dimension)) @ rotation.T
    epsilon = 0.5 * 3.0 * ratio**2  # r^2 = 2 eps / 3 = ratio^2, and R = 1
    center = rotation[:, 0]
    result = statdim_exact(curvature, center, epsilon, samples=6000, seed=1)
    expected = circular_cone_fraction(dimension, np.arcsin(ratio))
    assert result.case == "cone"
    assert abs(result.fraction - expected) < 4 * result.standard_error
    if dimension >= 20:  # Amelunxen et al. 2014: delta = D sin^2 + cos(2 angle) + o(1)
        asymptotic = ratio**2 + (1 - 2 * ratio**2) / dimension
        assert expected == pytest.approx(asymptotic, abs=0.01)


def test_statdim_exact_degenerate_cases():
    eigenvalues = np.array([1.0, 2.0, 4.0])
    eigen = (eigenvalues, np.eye(3))
    inside = statdim_exact(eigen, np.array([0.1, 0.0, 0.0]), 1.0, samples=10)
    assert (inside.case, inside.fraction, inside.standard_error) == ("whole space", 1.0, 0.0)
    # Apex on the surface: lambda_1 u_1^2 = 2 eps.
    surface = statdim_exact(eigen, np.array([np.sqrt(2.0), 0.0, 0.0]), 1.0, samples=10)
    assert surface.case == "half-space"
    assert surface.fraction == pytest.approx(1 - 0.5 / 3)


def projection_checks(cone, g, x):
    """x = Pi_K(g) iff x in K, g - x in the polar cone (checked on K's samples), x.(g - x) = 0."""
    assert cone.contains(x[None], tolerance=1e-7)[0]
    residual = g - x
    assert abs(x @ residual) <= 1e-7 * (g @ g)
    # The residual is normal to K at x: moving along K's boundary does not get closer.
    rng = np.random.default_rng(0)
    trial = cone.project(x[None] + 1e-3 * rng.standard_normal((200, g.size)))
    assert np.all(np.sum((trial - g) ** 2, axis=1) >= np.sum(residual**2) - 1e-10)


@pytest.mark.parametrize("where", ["short axis", "random", "long axis"])
def test_projection_agrees_with_clarabel_and_is_optimal(where):
    rng = np.random.default_rng(11)
    dimension = 25
    eigenvalues = np.exp(rng.uniform(np.log(1e-3), 0, dimension))
    eigenvalues.sort()
    center = {
        "short axis": np.eye(dimension)[-1],
        "random": rng.standard_normal(dimension),
        "long axis": np.eye(dimension)[0],
    }[where]
    center = 3.0 * center / np.sqrt(center**2 @ eigenvalues)  # R^2 lambda_u = 9 > 2 eps
    cone = DescentCone(eigenvalues, center, 1.0)
    assert cone.case == "cone"
    points = rng.standard_normal((6, dimension))
    secular = cone.project(points)
    for g, x in zip(points, secular):
        projection_checks(cone, g, x)
        solved = cone.project_cvxpy(g)
        assert solved is not None
        # Clarabel's tolerance, not the secular solution, sets the size of the difference.
        assert np.linalg.norm(solved - x) <= 1e-4 * np.linalg.norm(g)
        assert np.sum((g - x) ** 2) <= np.sum((g - solved) ** 2) + 1e-9
    result = statdim_exact((eigenvalues, np.eye(dimension)), center, 1.0, samples=50, cross_check=3)
    assert result.cross_checked == 3 and result.cross_check_error < 1e-4


def test_projection_of_a_point_with_no_component_along_the_axis_of_the_cone():
    """The "hard case" g_0 = 0: the unit ball seen from distance 2 is a circular cone of
    half-angle 30 degrees around the first axis; (0, 1) projects onto its edge at
    (0, 1) . d d with d = (cos 30, sin 30), i.e. (sqrt(3)/4, 1/4) (it used to give
    (0, 1/4), a point off the cone)."""
    cone = DescentCone(np.ones(2), np.array([2.0, 0.0]), 0.5)
    edge = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6)])
    for g in (np.array([0.0, 1.0]), np.array([0.0, -3.0])):
        x = cone.project(g[None])[0]
        mirrored = edge * np.array([1.0, np.sign(g[1])])
        np.testing.assert_allclose(x, (g @ mirrored) * mirrored, atol=1e-12)
        projection_checks(cone, g, x)
    # and in more dimensions, against Clarabel: g orthogonal to the apex direction
    rng = np.random.default_rng(5)
    eigenvalues = np.sort(rng.uniform(0.1, 1.0, 6))
    center = np.zeros(6)
    center[0] = 3.0 / np.sqrt(eigenvalues[0])
    cone = DescentCone(eigenvalues, center, 1.0)
    g = rng.standard_normal(6)
    g[0] = 0.0
    x = cone.project(g[None])[0]
    projection_checks(cone, g, x)
    np.testing.assert_allclose(x, cone.project_cvxpy(g), atol=1e-4 * np.linalg.norm(g))


def test_projection_in_original_coordinates_and_singular_curvature():
    rng = np.random.default_rng(3)
    dimension = 12
    basis = ortho_group.rvs(dimension, random_state=3)
    eigenvalues = np.concatenate([np.zeros(3), rng.uniform(0.1, 1.0, dimension - 3)])
    matrix = (basis * eigenvalues) @ basis.T
    center = basis @ (4.0 * np.ones(dimension) / np.sqrt(eigenvalues.sum()))
    points = rng.standard_normal((5, dimension))
    secular = project_onto_descent_cone(points, matrix, center, 0.5)
    clarabel = project_onto_descent_cone(points, matrix, center, 0.5, solver="cvxpy")
    np.testing.assert_allclose(secular, clarabel, atol=1e-4)
    # Flat directions of C are lines inside K: a point along them is its own projection.
    null_direction = basis[:, 0]
    kept = project_onto_descent_cone(null_direction[None], matrix, center, 0.5)[0]
    np.testing.assert_allclose(kept, null_direction, atol=1e-10)
    with pytest.raises(ValueError, match="solver"):
        project_onto_descent_cone(points, matrix, center, 0.5, solver="scs")


def test_paper_form_underestimates_the_exact_statistical_dimension_off_the_short_axis():
    """DESIGN section 7: the closed form is roughly right on the shortest axis, low elsewhere."""
    rng = np.random.default_rng(4)
    dimension = 60
    eigenvalues = np.exp(rng.uniform(np.log(1e-3), 0, dimension))
    eigenvalues.sort()
    spectrum = exact_spectrum(eigenvalues)
    gaps = {}
    for where, axis in (("short", dimension - 1), ("long", 0)):
        center = np.zeros(dimension)
        center[axis] = 3.0 / np.sqrt(eigenvalues[axis])
        exact = statdim_exact((eigenvalues, np.eye(dimension)), center, 1.0, samples=2000).fraction
        paper = statistical_dimension(spectrum, np.linalg.norm(center), 1.0)
        gaps[where] = (paper - exact) / exact
    assert abs(gaps["short"]) < 0.1
    assert gaps["long"] < -0.3
